"""Where models come from, and the one builder of each: the DiT (`load_dit`: a checkpoint, a preset's random weights
or the built-in demo), the text encoder (`prompt_encoder`), the VAE (`load_vae`); and a converted Wan pipeline, one
folder with the DiT, the umT5 text encoder, the VAE and the tokenizer.

    OUT/pipeline.json   {"format": "rf_jax.pipeline/1", "parts": {...}, "source": ...}
    OUT/dit/  OUT/umt5/  OUT/vae/    rf_jax checkpoints (rf_jax.checkpoint)
    OUT/tokenizer/tokenizer.json

`rf-jax convert WAN_FOLDER OUT` writes one (rf_jax.convert.wan_folder); `rf-jax generate --checkpoint OUT` reads it.
`random_pipeline` writes the tiny random one the tests and the README's smoke run use.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from typing import Any

from rf_jax.config import PRESETS, ComputeDtype, ModelConfig
from rf_jax.demo import Demo
from rf_jax.io import atomic_directory, write_json_atomic
from rf_jax.ops import AttnImpl

FORMAT = "rf_jax.pipeline/1"
MANIFEST = "pipeline.json"
PARTS = ("dit", "umt5", "vae", "tokenizer")


def is_pipeline(path: str | None) -> bool:
  return bool(path) and os.path.isfile(os.path.join(path, MANIFEST))


@dataclasses.dataclass(frozen=True)
class PipelineFolder:
  root: str
  manifest: dict

  @classmethod
  def open(cls, path: str) -> "PipelineFolder":
    file = os.path.join(path, MANIFEST)
    try:
      with open(file) as f:
        manifest = json.load(f)
    except FileNotFoundError:
      raise ValueError(f"{path}: not a converted Wan pipeline (no {MANIFEST})") from None
    except json.JSONDecodeError as e:
      raise ValueError(f"{file}: not valid JSON ({e})") from None
    if manifest.get("format") != FORMAT:
      raise ValueError(f"{file}: format {manifest.get('format')!r} is not {FORMAT!r}")
    missing = [p for p in PARTS if not os.path.isdir(os.path.join(path, p))]
    if missing:
      raise ValueError(f"{path}: the pipeline lacks {missing} (convert the Wan folder again)")
    return cls(os.path.abspath(path), manifest)

  def part(self, name: str) -> str:
    return os.path.join(self.root, name)


def check_compatible(dit, umt5=None, vae=None) -> None:
  """The three models must fit together: umT5's width is the DiT's text_dim, the VAE's latent channels the DiT's."""
  if umt5 is not None and umt5.dim != dit.text_dim:
    raise ValueError(f"the text encoder's width {umt5.dim} is not the DiT's text_dim {dit.text_dim}")
  if vae is not None and (vae.z_dim != dit.out_dim or vae.z_dim != dit.in_dim):
    raise ValueError(f"the VAE's {vae.z_dim} latent channels do not match the DiT's in_dim {dit.in_dim} / "
                     f"out_dim {dit.out_dim}")


def write_manifest(folder: str, source: dict[str, Any]) -> None:
  write_json_atomic(os.path.join(folder, MANIFEST), {"format": FORMAT, "parts": {p: p for p in PARTS},
                                                     "source": source})


def random_pipeline(out: str, *, seed: int = 0, force: bool = False) -> str:
  """Writes a pipeline of random tiny models (DiT `tiny`, `umt5-tiny`, `vae-tiny`) and the built-in byte tokenizer,
  each model from `seed`, exactly as `generate --preset tiny --seed SEED` builds them in memory."""
  from flax import nnx
  from rf_jax.checkpoint import save_checkpoint
  with atomic_directory(out, force=force) as tmp:
    for name in ("dit", "umt5", "vae"):
      model = random_model(name, seed)
      save_checkpoint(os.path.join(tmp, name), model.config, nnx.state(model, nnx.Param),
                      meta={"source": f"random (seed {seed})"})
    tiny_tokenizer().save(os.path.join(tmp, "tokenizer"))
    write_manifest(tmp, {"random_seed": seed})
  return os.path.abspath(out)


def random_model(kind: str, seed: int, *, dtype=None, attn_impl: AttnImpl | str = AttnImpl.AUTO):
  """The tiny random model of `kind` ("dit", "umt5", "vae") from `seed` (float32 parameters)."""
  import jax.numpy as jnp
  from flax import nnx
  from rf_jax.registry import KINDS
  return KINDS[kind].build(random_model_config(kind), dtype=dtype or jnp.float32, attn_impl=attn_impl,
                           rngs=nnx.Rngs(seed))


def random_model_config(kind: str):
  """The config of the tiny random model of `kind` ("dit", "umt5", "vae")."""
  from rf_jax.config import TINY
  from rf_jax.text.umt5 import UMT5_TINY
  from rf_jax.vae.wan_vae import VAE_TINY
  return {"dit": TINY, "umt5": UMT5_TINY, "vae": VAE_TINY}[kind]


def tiny_tokenizer():
  from rf_jax.config import TINY
  from rf_jax.text.tokenizer import byte_tokenizer
  return byte_tokenizer(text_len=TINY.text_len)


# ------------------------------------------------------------------------------------------------ what generate uses

RANDOM = "random"  # a part made from the seed (the tiny preset)
BUILTIN = "builtin"  # the byte tokenizer


@dataclasses.dataclass(frozen=True)
class Sources:
  """Where each model comes from: a checkpoint folder, RANDOM (tiny, from the seed), or None (not available)."""
  dit: str | None  # None: the preset's random weights
  umt5: str | None
  tokenizer: str | None  # a folder with tokenizer.json, BUILTIN, or None
  vae: str | None


def resolve_sources(checkpoint: str | None, preset: str | None, *, text_encoder: str | None = None,
                    tokenizer: str | None = None, vae: str | None = None) -> Sources:
  """--checkpoint may be a DiT checkpoint or a pipeline folder (which then supplies the other parts); explicit
  --text-encoder / --tokenizer / --vae win; the tiny preset supplies random ones and the byte tokenizer."""
  pipe = PipelineFolder.open(checkpoint) if is_pipeline(checkpoint) else None
  tiny = checkpoint is None and preset == "tiny"
  return Sources(
      dit=pipe.part("dit") if pipe else checkpoint,
      umt5=text_encoder or (pipe.part("umt5") if pipe else RANDOM if tiny else None),
      tokenizer=tokenizer or (pipe.part("tokenizer") if pipe else BUILTIN if tiny else None),
      vae=vae or (pipe.part("vae") if pipe else RANDOM if tiny else None))


def load_tokenizer(source: str, text_len: int):
  from rf_jax.text.tokenizer import UMT5Tokenizer, byte_tokenizer
  return byte_tokenizer(text_len=text_len) if source == BUILTIN else UMT5Tokenizer.from_dir(source, text_len=text_len)


def prompt_encoder(sources: Sources, dit_config, *, seed: int, cache_dir: str | None):
  """The `PromptEncoder` of these sources, checked against the DiT (and the tokenizer against the encoder)."""
  from rf_jax import checkpoint
  from rf_jax.text.encode import PromptEncoder, checkpoint_identity
  from rf_jax.text.umt5 import UMT5_TINY
  if sources.umt5 is None or sources.tokenizer is None:
    raise ValueError("text prompts need the umT5 text encoder and its tokenizer: give --checkpoint PIPELINE (a Wan "
                     "folder converted by `rf-jax convert`), or --text-encoder DIR and --tokenizer DIR")
  tokenizer = load_tokenizer(sources.tokenizer, dit_config.text_len)
  if sources.umt5 == RANDOM:
    config, identity = UMT5_TINY, f"random {UMT5_TINY} seed {seed}"

    def load():
      return random_model("umt5", seed)
  else:
    config, identity = checkpoint.load_config(sources.umt5, "umt5"), checkpoint_identity(sources.umt5)

    def load():
      import jax.numpy as jnp
      stored = checkpoint.stored_dtypes(sources.umt5)[("token_embedding", "embedding")]
      dtype = jnp.bfloat16 if stored == jnp.bfloat16 else jnp.float32  # Wan runs umT5 in its stored bf16
      return checkpoint.load_model(sources.umt5, dtype=dtype, kind="umt5")
  check_compatible(dit_config, config)
  vocab = tokenizer.vocab_size
  if vocab > config.vocab:
    raise ValueError(f"the tokenizer ({tokenizer.source}) has {vocab} tokens; the text encoder's table only "
                     f"{config.vocab}")
  return PromptEncoder(tokenizer, load, identity=identity, cache_dir=cache_dir)


def vae_config(source: str):
  """The VAE's config (its strides: how pixels map to latents), read without loading it."""
  from rf_jax import checkpoint
  return random_model_config("vae") if source == RANDOM else checkpoint.load_config(source, "vae")


def load_vae(source: str, dit_config, *, seed: int):
  from rf_jax import checkpoint
  vae = random_model("vae", seed) if source == RANDOM else checkpoint.load_model(source, kind="vae")
  check_compatible(dit_config, vae=vae.config)
  return vae


# ------------------------------------------------------------------------------------------------ the DiT

DEFAULT_LATENT_HW = (60, 104)  # 480x832 video, Wan2.1's
TINY_LATENT_HW = (8, 8)
DEFAULT_FRAMES = 21  # latent frames: Self-Forcing's 81-frame (5 s) video


def resolve_config(spec: str | None, src: str | None = None) -> ModelConfig:
  """A preset name, a Wan `config.json`, a fixture `config.json` (constructor_args), or an rf_jax checkpoint;
  without a spec, the config.json inside the folder `src`."""
  from rf_jax import config as cfg
  if spec is None:
    if src and os.path.isdir(src) and os.path.exists(os.path.join(src, "config.json")):
      spec = os.path.join(src, "config.json")
    else:
      raise ValueError("--config is required (a preset: " + ", ".join(sorted(PRESETS)) + "; or a config.json)")
  if spec in PRESETS:
    return cfg.get_preset(spec)
  if os.path.isdir(spec):
    spec = os.path.join(spec, "config.json")
  if not os.path.exists(spec):
    raise ValueError(f"--config {spec!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a file")
  with open(spec) as f:
    try:
      d = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{spec}: not valid JSON ({e})") from None
  if "constructor_args" in d:
    return cfg.from_constructor_args(d["constructor_args"])
  if "format" in d and "model" in d:
    from rf_jax.checkpoint import load_config
    return load_config(os.path.dirname(os.path.abspath(spec)))
  return cfg.from_wan_config(spec)


class DiTOrigin(enum.Enum):
  CHECKPOINT = "checkpoint"  # an rf_jax DiT checkpoint (or the dit/ of a pipeline folder)
  RANDOM = "random"  # a config's random weights from a seed (a preset)
  DEMO = "demo"  # the built-in demo model shipped in the package


@dataclasses.dataclass(frozen=True)
class DiTSource:
  """Where the DiT comes from. Build one with `checkpoint`, `random`, `preset`, `demo` or `of` (the CLI's pair)."""
  origin: DiTOrigin
  path: str | None = None  # CHECKPOINT: a DiT checkpoint folder or a pipeline folder
  model_config: ModelConfig | None = None  # RANDOM
  preset: str | None = None  # RANDOM from a preset: its name
  seed: int = 0  # RANDOM
  demo_model: Demo = Demo.SHAPES  # DEMO: which one

  @classmethod
  def checkpoint(cls, path: str) -> "DiTSource":
    """A DiT checkpoint, or a pipeline folder (its dit/)."""
    return cls(DiTOrigin.CHECKPOINT, path=path)

  @property
  def dit_path(self) -> str | None:
    """CHECKPOINT: the DiT checkpoint folder itself (a pipeline folder's dit/)."""
    if self.origin is not DiTOrigin.CHECKPOINT:
      return None
    return PipelineFolder.open(self.path).part("dit") if is_pipeline(self.path) else self.path

  @classmethod
  def random(cls, config: ModelConfig, seed: int = 0, *, preset: str | None = None) -> "DiTSource":
    return cls(DiTOrigin.RANDOM, model_config=config, preset=preset, seed=seed)

  @classmethod
  def of_preset(cls, name: str, seed: int = 0) -> "DiTSource":
    return cls.random(resolve_config(name), seed, preset=name)

  @classmethod
  def demo(cls, which: Demo = Demo.SHAPES) -> "DiTSource":
    return cls(DiTOrigin.DEMO, demo_model=which)

  @classmethod
  def of(cls, checkpoint: str | None, preset: str | None, *, seed: int = 0,
         demo: Demo | None = None) -> "DiTSource":
    """--checkpoint, else --preset, else the built-in demo `demo` (default Demo.SHAPES); --demo with either of the
    others is refused."""
    if demo is not None and (checkpoint is not None or preset is not None):
      raise ValueError(f"--demo {demo.value} names a built-in model; it cannot go with "
                       f"{'--checkpoint' if checkpoint is not None else '--preset'}")
    if checkpoint is not None:
      return cls.checkpoint(checkpoint)
    if preset is not None:
      return cls.of_preset(preset, seed)
    return cls.demo(demo or Demo.SHAPES)

  @property
  def is_tiny_preset(self) -> bool:
    return self.origin is DiTOrigin.RANDOM and self.preset == "tiny"

  def config(self) -> ModelConfig:
    """The DiT's config, read without building the model."""
    if self.origin is DiTOrigin.CHECKPOINT:
      from rf_jax.checkpoint import load_config
      return load_config(self.dit_path, "dit")
    if self.origin is DiTOrigin.RANDOM:
      return self.model_config
    from rf_jax import demo
    return ModelConfig.from_dict(demo.load_info(self.demo_model.folder)["model"], source="the demo model")

  def default_latent_hw(self) -> tuple[int, int]:
    """The latent size a run uses unless told: the demo's frames, 8x8 for the tiny preset, else 480x832 video."""
    if self.origin is DiTOrigin.DEMO:
      from rf_jax import demo
      return tuple(demo.load_info(self.demo_model.folder)["frame_hw"])
    return TINY_LATENT_HW if self.is_tiny_preset else DEFAULT_LATENT_HW

  def describe(self) -> dict[str, Any]:
    """Where the weights came from, for summaries."""
    if self.origin is DiTOrigin.CHECKPOINT:
      return {"checkpoint": os.path.abspath(self.path)}
    if self.origin is DiTOrigin.RANDOM:
      return {"preset": self.preset, "weights": f"random (seed {self.seed})"}
    from rf_jax import demo
    folder = self.demo_model.folder
    return {"demo": folder, "trained": demo.load_info(folder).get("trained")}


def load_dit(source: DiTSource, *, dtype: ComputeDtype | str = ComputeDtype.FLOAT32,
             attn_impl: AttnImpl | str = AttnImpl.AUTO, mesh=None, abstract: bool = False):
  """The one builder of the causal DiT: `source`'s weights, computing in `dtype`, attention on `attn_impl`.

  mesh: a checkpoint is restored straight onto it (each parameter into its shards by the partition rules); random
  and demo weights are built on the default device (`rf_jax.parallel.place_model` moves them). abstract: shapes
  only (`nnx.eval_shape`; RANDOM sources).
  """
  from flax import nnx
  from rf_jax.registry import KINDS
  dtype, attn_impl = ComputeDtype.parse(dtype).jnp, AttnImpl.parse(attn_impl)
  if source.origin is DiTOrigin.CHECKPOINT:
    from rf_jax import checkpoint
    from rf_jax.parallel.placement import param_shardings
    return checkpoint.load_model(source.dit_path, dtype=dtype, attn_impl=attn_impl,
                                 shardings=None if mesh is None else param_shardings(mesh))
  if source.origin is DiTOrigin.RANDOM:
    make = lambda: KINDS["dit"].build(source.model_config, dtype=dtype, attn_impl=attn_impl,  # noqa: E731
                                      rngs=nnx.Rngs(source.seed))
    return nnx.eval_shape(make) if abstract else make()
  from rf_jax import demo
  return demo.load_demo(source.demo_model.folder, dtype=dtype, attn_impl=attn_impl)[0]


def inspect_parameters(ckpt: str | None = None, *, preset: str | None = None, verify: bool = False) -> str:
  """`rf-jax inspect`: a checkpoint's (or, through jax.eval_shape, a preset's) kind, config, parameter count by
  dtype and meta, as text; with `verify`, every array read and checked (`checkpoint.verify_checkpoint`)."""
  import numpy as np
  from rf_jax import checkpoint, registry
  from rf_jax.text.umt5 import PRESETS as TEXT_PRESETS
  from rf_jax.vae.wan_vae import PRESETS as VAE_PRESETS
  if (ckpt is None) == (preset is None):
    raise ValueError("give a checkpoint folder or --preset NAME (not both)")
  if preset is not None:
    config = {**TEXT_PRESETS, **VAE_PRESETS}.get(preset) or resolve_config(preset)
    shapes = registry.param_shapes(config)  # jax.eval_shape: nothing is allocated
    dtypes = {p: np.dtype(np.float32) for p in shapes}
    meta = {"source": f"preset {preset} (shapes only, float32)"}
  else:
    if is_pipeline(ckpt):
      raise ValueError(f"{ckpt} is a pipeline folder; inspect its parts: dit/, umt5/ or vae/")
    if os.path.isfile(ckpt):
      raise ValueError(f"{ckpt} is a file; inspect reads rf_jax checkpoint folders (convert PyTorch weights first: "
                       f"rf-jax convert {ckpt} OUT)")
    config = checkpoint.load_config(ckpt, kind=None)
    shapes = registry.param_shapes(config)
    dtypes = checkpoint.stored_dtypes(ckpt)
    meta = checkpoint.load_meta(ckpt)
  by_dtype: dict[str, list[int]] = {}
  for p, s in shapes.items():
    entry = by_dtype.setdefault(str(dtypes[p]), [0, 0])
    entry[0] += 1
    entry[1] += int(np.prod(s, dtype=np.int64))
  total = sum(v[1] for v in by_dtype.values())
  nbytes = sum(int(np.prod(shapes[p], dtype=np.int64)) * dtypes[p].itemsize for p in shapes)
  lines = [f"{registry.kind_of(config).title}:", json.dumps(config.to_dict(), indent=2),
           f"parameters: {total:,} in {len(shapes)} arrays ({nbytes / 2**30:.3f} GiB)"]
  lines += [f"  {dt}: {count:,} parameters in {n} arrays" for dt, (n, count) in sorted(by_dtype.items())]
  lines += [f"{k}: {v}" for k, v in meta.items()]
  if ckpt is not None and verify:
    got = checkpoint.verify_checkpoint(ckpt)
    lines.append(f"verified: all {got['arrays']} arrays read ({got['parameters']:,} values): shapes and dtypes as "
                 "stored, every value finite")
  elif ckpt is not None:
    lines.append("(read from the metadata only; `rf-jax inspect --verify` reads and checks every array)")
  return "\n".join(lines)
