"""A whole Wan2.1 model folder -> an rf_jax pipeline folder (rf_jax.pipeline), in one go.

    Wan2.1-T2V-1.3B/                              OUT/
      config.json                                   pipeline.json
      diffusion_pytorch_model*.safetensors   ->     dit/        (or the DiT of --dit, e.g. self_forcing_dmd.pt)
      models_t5_umt5-xxl-enc-bf16.pth        ->     umt5/
      Wan2.1_VAE.pth                         ->     vae/
      google/umt5-xxl/tokenizer.json         ->     tokenizer/

Each part goes through the same strict rule tables and the same pickle-free .pth reader as the DiT. The text
encoder's and the VAE's configs are read off their tensors' shapes (umT5: every size; VAE: the base width, the rest
is Wan's fixed layout, which the strict conversion then checks). Every input is found and checked, and the three
configs are checked against each other, before anything is written; OUT appears only when all parts are written.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from rf_jax.convert.readers import SourceTensor, open_source

T5_FILE = "models_t5_umt5-xxl-enc-bf16.pth"
VAE_FILE = "Wan2.1_VAE.pth"
TOKENIZER_DIR = os.path.join("google", "umt5-xxl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def is_wan_folder(path: str) -> bool:
  """A folder holding Wan's text encoder or VAE file (a folder with only DiT weights converts as the DiT alone)."""
  return os.path.isdir(path) and any(_find(path, name) for name in (T5_FILE, VAE_FILE))


def _find(folder: str, name: str) -> str | None:
  """`name`, or a .safetensors of the same stem."""
  for candidate in (name, os.path.splitext(name)[0] + ".safetensors"):
    path = os.path.join(folder, candidate)
    if os.path.isfile(path):
      return path
  return None


def infer_umt5_config(tensors: list[SourceTensor]):
  """UMT5Config from the encoder's tensor shapes."""
  from rf_jax.text.umt5 import UMT5Config
  shapes = {t.key: t.shape for t in tensors}
  need = ("token_embedding.weight", "blocks.0.attn.q.weight", "blocks.0.ffn.fc1.weight",
          "blocks.0.pos_embedding.embedding.weight")
  missing = [k for k in need if k not in shapes]
  if missing:
    raise ValueError(f"not a umT5 encoder state dict: no {missing}")
  layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
  vocab, dim = shapes["token_embedding.weight"]
  buckets, heads = shapes["blocks.0.pos_embedding.embedding.weight"]
  return UMT5Config(vocab=vocab, dim=dim, dim_attn=shapes["blocks.0.attn.q.weight"][0],
                    dim_ffn=shapes["blocks.0.ffn.fc1.weight"][0], num_heads=heads, num_layers=layers,
                    num_buckets=buckets)


def infer_vae_config(tensors: list[SourceTensor]):
  """VAEConfig from the tensors: the base width from the encoder's first conv, the latent channels from conv2."""
  from rf_jax.vae.wan_vae import VAEConfig
  shapes = {t.key: t.shape for t in tensors}
  if "encoder.conv1.weight" not in shapes or "conv2.weight" not in shapes:
    raise ValueError("not a Wan VAE state dict: no encoder.conv1.weight / conv2.weight")
  return VAEConfig(dim=shapes["encoder.conv1.weight"][0], z_dim=shapes["conv2.weight"][0])


def detect_kind(tensors: list[SourceTensor]) -> str:
  """Which model a state dict holds: "dit", "umt5" or "vae" (by keys only the model has)."""
  keys = {t.key for t in tensors}
  if "patch_embedding.weight" in keys:
    return "dit"
  if "token_embedding.weight" in keys:
    return "umt5"
  if "encoder.conv1.weight" in keys and "decoder.conv1.weight" in keys:
    return "vae"
  raise ValueError(f"cannot tell which model these {len(keys)} tensors hold (no patch_embedding.weight, "
                   f"token_embedding.weight or encoder.conv1.weight; first keys {sorted(keys)[:5]})")


def config_for(kind: str, tensors: list[SourceTensor], config_spec: str | None, src: str):
  """The config to convert into: the DiT's from --config or the folder's config.json, the others' from shapes."""
  if kind == "dit":
    from rf_jax.pipeline import resolve_config
    return resolve_config(config_spec, src)
  if config_spec is not None:
    raise ValueError(f"--config applies to DiT weights; the {kind} config is read off the tensors' shapes")
  return infer_umt5_config(tensors) if kind == "umt5" else infer_vae_config(tensors)


def convert_wan_folder(src: str, out: str, *, dit: str | None = None, weights: str | None = None,
                       config=None, dtype: str | None = None, force: bool = False,
                       progress: bool = True, check_finite: bool = False) -> dict[str, Any]:
  """Converts the Wan folder `src` into the pipeline folder `out`; returns a summary.

  dit: another DiT weight file to use instead of the folder's (e.g. Self-Forcing's `self_forcing_dmd.pt`; `weights`
    picks its entry). config: the DiT config (default: the folder's config.json).
  dtype: stored dtype of the DiT's and the encoder's matrices (default: as stored; the VAE always keeps its own).
  """
  from rf_jax import pipeline
  from rf_jax.io import atomic_directory
  from rf_jax.convert.core import convert_checkpoint
  from rf_jax.pipeline import resolve_config
  from rf_jax.text.tokenizer import UMT5Tokenizer

  src = os.path.abspath(src)
  out = os.path.abspath(out)
  if os.path.exists(out) and not force:
    raise FileExistsError(f"{out} already exists; pass --force to replace it")
  t5_path, vae_path = _find(src, T5_FILE), _find(src, VAE_FILE)
  tok_dir = os.path.join(src, TOKENIZER_DIR)
  missing = [name for name, ok in ((T5_FILE, t5_path), (VAE_FILE, vae_path),
                                   (os.path.join(TOKENIZER_DIR, "tokenizer.json"),
                                    os.path.isfile(os.path.join(tok_dir, "tokenizer.json")))) if not ok]
  if missing:
    raise ValueError(f"{src}: a Wan model folder needs {missing} (found {sorted(os.listdir(src))[:12]})")
  dit_config = resolve_config(config, src)
  dit_src = dit or src
  t5_config = infer_umt5_config(open_source(t5_path)[0])
  vae_config = infer_vae_config(open_source(vae_path)[0])
  pipeline.check_compatible(dit_config, t5_config, vae_config)
  tokenizer = UMT5Tokenizer.from_dir(tok_dir)  # readable, and fits the encoder, before anything is written
  if tokenizer.vocab_size > t5_config.vocab:
    raise ValueError(f"{tok_dir}: the tokenizer has {tokenizer.vocab_size} tokens; the text encoder's table only "
                     f"{t5_config.vocab}")

  summary: dict[str, Any] = {}
  t0 = time.perf_counter()
  with atomic_directory(out, force=force) as tmp:
    for name, source, cfg, kw in (("dit", dit_src, dit_config, {"weights": weights, "dtype": dtype}),
                                  ("umt5", t5_path, t5_config, {"dtype": dtype}),
                                  ("vae", vae_path, vae_config, {})):
      meta = convert_checkpoint(source, os.path.join(tmp, name), config=cfg, progress=progress,
                                check_finite=check_finite, **kw)
      summary[name] = {k: meta.get(k) for k in ("source", "weights", "dtype", "num_params")}
    os.makedirs(os.path.join(tmp, "tokenizer"))
    for name in TOKENIZER_FILES:
      if os.path.isfile(os.path.join(tok_dir, name)):
        shutil.copyfile(os.path.join(tok_dir, name), os.path.join(tmp, "tokenizer", name))
    summary["tokenizer"] = {"source": tok_dir}
    pipeline.write_manifest(tmp, {"wan_folder": src, **{k: v for k, v in summary.items()}})
  return {"out": out, "seconds": round(time.perf_counter() - t0, 2), "parts": summary}


def convert_source(src: str, out: str, *, dit: str | None = None, weights: str | None = None,
                   config: str | None = None, dtype: str | None = None, force: bool = False,
                   progress: bool = True, check_finite: bool = False) -> dict[str, Any]:
  """`rf-jax convert SRC OUT`: a whole Wan folder -> a pipeline folder, or one model's weights (its kind read off
  the tensors) -> one checkpoint. Returns what was written."""
  from rf_jax.convert.core import convert_checkpoint
  t0 = time.perf_counter()
  if is_wan_folder(src):
    return convert_wan_folder(src, out, dit=dit, weights=weights, config=config, dtype=dtype, force=force,
                              progress=progress, check_finite=check_finite)
  if dit:
    raise ValueError("--dit applies to a whole Wan folder (one holding models_t5_umt5-xxl-enc-bf16.pth and "
                     "Wan2.1_VAE.pth)")
  tensors, _ = open_source(src, weights=weights)
  kind = detect_kind(tensors)
  meta = convert_checkpoint(src, out, config=config_for(kind, tensors, config, src), weights=weights, dtype=dtype,
                            force=force, progress=progress, check_finite=check_finite)
  return {"out": os.path.abspath(out), "kind": kind, "seconds": round(time.perf_counter() - t0, 2), **meta}
