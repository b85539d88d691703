"""The `rf-jax` command line: convert, inspect, check-reference, generate, sweep, train, forward."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Sequence

from rf_jax.config import PRESETS, ModelConfig

ATTENTION_BACKENDS = ("auto", "reference", "cudnn", "pallas_gpu", "pallas_tpu")  # rf_jax.ops.AttnImpl's values


def resolve_config(spec: str | None, src: str | None = None) -> ModelConfig:
  """A preset name, a Wan `config.json`, a fixture `config.json` (constructor_args), or an rf_jax checkpoint."""
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


def cmd_convert(args) -> int:
  from rf_jax.convert import convert_checkpoint, open_source
  from rf_jax.convert.wan_folder import config_for, convert_wan_folder, detect_kind, is_wan_folder
  t0 = time.perf_counter()
  if is_wan_folder(args.src):
    result = convert_wan_folder(args.src, args.out, dit=args.dit, weights=args.weights, config=args.config,
                                dtype=args.dtype, force=args.force, progress=not args.quiet)
    print(json.dumps(result))
    return 0
  if args.dit:
    raise ValueError("--dit applies to a whole Wan folder (one holding models_t5_umt5-xxl-enc-bf16.pth and "
                     "Wan2.1_VAE.pth)")
  tensors, _ = open_source(args.src, weights=args.weights)
  kind = detect_kind(tensors)
  config = config_for(kind, tensors, args.config, args.src)
  meta = convert_checkpoint(args.src, args.out, config=config, weights=args.weights, dtype=args.dtype,
                            force=args.force, progress=not args.quiet)
  print(json.dumps({"out": os.path.abspath(args.out), "kind": kind, "seconds": round(time.perf_counter() - t0, 2),
                    **meta}))
  return 0


def cmd_inspect(args) -> int:
  import numpy as np
  from rf_jax import checkpoint
  if (args.ckpt is None) == (args.preset is None):
    raise ValueError("give a checkpoint folder or --preset NAME (not both)")
  if args.preset is not None:
    from rf_jax.text.umt5 import PRESETS as TEXT_PRESETS
    from rf_jax.vae.wan_vae import PRESETS as VAE_PRESETS
    config = {**TEXT_PRESETS, **VAE_PRESETS}.get(args.preset) or resolve_config(args.preset)
    shapes = checkpoint.param_shapes(config)  # jax.eval_shape: nothing is allocated
    dtypes = {p: np.dtype(np.float32) for p in shapes}
    meta = {"source": f"preset {args.preset} (shapes only, float32)"}
  else:
    if os.path.isfile(os.path.join(args.ckpt, "pipeline.json")):
      raise ValueError(f"{args.ckpt} is a pipeline folder; inspect its parts: dit/, umt5/ or vae/")
    config = checkpoint.load_config(args.ckpt, kind=None)
    shapes = checkpoint.param_shapes(config)
    dtypes = checkpoint.stored_dtypes(args.ckpt)
    meta = checkpoint.load_meta(args.ckpt)
  by_dtype: dict[str, list[int]] = {}
  for p, s in shapes.items():
    entry = by_dtype.setdefault(str(dtypes[p]), [0, 0])
    entry[0] += 1
    entry[1] += int(np.prod(s, dtype=np.int64))
  total = sum(v[1] for v in by_dtype.values())
  nbytes = sum(int(np.prod(shapes[p], dtype=np.int64)) * dtypes[p].itemsize for p in shapes)
  print(f"{checkpoint.kind_of(config).title}:")
  print(json.dumps(config.to_dict(), indent=2))
  print(f"parameters: {total:,} in {len(shapes)} arrays ({nbytes / 2**30:.3f} GiB)")
  for dt, (n, count) in sorted(by_dtype.items()):
    print(f"  {dt}: {count:,} parameters in {n} arrays")
  for k, v in meta.items():
    print(f"{k}: {v}")
  return 0


def cmd_check_reference(args) -> int:
  from rf_jax.reference import check_reference
  results, notes = check_reference(args.dir, tolerance=args.tolerance, abs_tolerance=args.abs_tolerance)
  for note in notes:
    print(f"note: {note}", file=sys.stderr)
  summary = {"compared": len(results), "passed": all(r.passed for r in results),
             "failed": [r.name for r in results if not r.passed]}
  for metric in ("rel_err", "max_abs", "mismatch"):
    values = [r.value for r in results if r.metric == metric]
    if values:
      summary[f"worst_{metric}"] = max(values)
  print(json.dumps(summary))
  passed = summary["passed"]
  return 0 if passed else 1


def cmd_forward(args) -> int:
  """A block-causal forward of a model on seeded random latents and text: a smoke run of the whole DiT."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from rf_jax import checkpoint
  from rf_jax.io import atomic_directory, write_json_atomic
  from rf_jax.model import CausalWanDiT
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.compute_dtype]
  if args.checkpoint:
    model = checkpoint.load_model(args.checkpoint, dtype=dtype, attn_impl=args.attention)
  else:
    model = CausalWanDiT(resolve_config(args.preset), dtype=dtype, attn_impl=args.attention,
                         rngs=nnx.Rngs(args.seed))
  cfg = model.config
  kx, kc = jax.random.split(jax.random.key(args.seed))
  h, w = args.latent_hw
  x = jax.random.normal(kx, (args.batch, args.frames, h, w, cfg.in_dim))
  context = jax.random.normal(kc, (args.batch, cfg.text_len, cfg.text_dim))
  t = jnp.full((args.batch, args.frames), args.timestep, jnp.float32)
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, x, t, context):
    return nnx.merge(graphdef, state).forward_train(x, t, context, chunk_frames=args.chunk_frames)

  t0 = time.perf_counter()
  flow = jax.block_until_ready(run(state, x, t, context))
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  flow = jax.block_until_ready(run(state, x, t, context))
  steady = time.perf_counter() - t0
  with atomic_directory(args.out, force=args.force) as tmp:
    np.save(os.path.join(tmp, "flow.npy"), np.asarray(flow))
    write_json_atomic(os.path.join(tmp, "summary.json"), {
        "model": cfg.to_dict(), "frames": args.frames, "batch": args.batch, "latent_hw": [h, w],
        "compute_dtype": args.compute_dtype, "attention": model.attention_backend().value, "seed": args.seed,
        "first_call_seconds": round(first, 3),
        "steady_seconds": round(steady, 4), "flow_rms": float(jnp.sqrt(jnp.mean(flow**2))),
        "device": str(jax.devices()[0]), "jax": jax.__version__})
  print(f"wrote {os.path.abspath(args.out)}: flow {tuple(flow.shape)}, first call {first:.2f}s "
        f"(compile + run), then {steady * 1e3:.1f} ms")
  return 0


# generate's policy options: flag -> memory-block key. Only the flags given are passed to the policy, which rejects
# settings it does not have.
_POLICY_FLAGS = {
    "window_frames": "window_frames", "sink_frames": "sink_frames", "positions": "positions",
    "history_frames": "history_frames", "tail_frames": "tail_frames", "num_candidates": "num_candidates",
    "lam": "lambda", "reservoir_frames": "reservoir_frames", "selection": "selection",
    "slow_frames": "slow_frames", "fast_frames": "fast_frames", "rope_length": "rope_length",
    "threshold": "threshold", "mode": "mode",
}


def setup_parallel(args):
  """jax.distributed (when asked for) and the --mesh, or None for one device. Runs before any device is touched."""
  from rf_jax.parallel import MeshConfig, make_mesh
  from rf_jax.parallel.distributed import initialize
  initialize(args.coordinator, args.num_processes, args.process_id, auto=args.distributed)
  if not args.mesh:
    return None
  return make_mesh(MeshConfig.parse(args.mesh))


def param_shardings(mesh):
  """Checkpoint restore straight onto the mesh: (Flax path, shape) -> NamedSharding by the partition rules."""
  import jax
  from rf_jax.parallel import param_spec
  from rf_jax.parallel.placement import mesh_config
  cfg = mesh_config(mesh)
  return lambda path, shape: jax.NamedSharding(mesh, param_spec(".".join(map(str, path)), shape, cfg))


def add_parallel_flags(p) -> None:
  g = p.add_argument_group("devices and hosts (see README, Running on a mesh)")
  g.add_argument("--mesh", help="device mesh, e.g. data=2,tensor=4 (axes data, fsdp, tensor; product = devices)")
  g.add_argument("--coordinator", help="HOST:PORT of process 0, to run as one of several processes")
  g.add_argument("--num-processes", type=int, help="with --coordinator: how many processes")
  g.add_argument("--process-id", type=int, help="with --coordinator: this process's index")
  g.add_argument("--distributed", action="store_true",
                 help="initialise jax.distributed from the cluster (TPU pods: automatic; SLURM, Open MPI)")


def add_compile_cache_flags(p) -> None:
  g = p.add_argument_group("compilation cache (see README)")
  g.add_argument("--compile-cache", metavar="DIR", help="keep compiled steps here (default $RF_JAX_COMPILE_CACHE, "
                 "$JAX_COMPILATION_CACHE_DIR, $RF_JAX_CACHE/jax or ~/.cache/rf_jax/jax)")
  g.add_argument("--no-compile-cache", action="store_true", help="compile everything afresh, keep nothing")


def setup_compile_cache(args) -> str | None:
  from rf_jax import compile_cache
  return compile_cache.configure(compile_cache.resolve_dir(args.compile_cache, args.no_compile_cache))


def read_prompts(args) -> list[str]:
  """--prompt (repeatable) then the lines of --prompts FILE (blank lines and lines starting with # skipped)."""
  prompts = list(args.prompt or [])
  if args.prompts:
    try:
      with open(args.prompts, encoding="utf-8") as f:
        lines = f.read().splitlines()
    except FileNotFoundError:
      raise ValueError(f"--prompts {args.prompts}: no such file") from None
    except UnicodeDecodeError as e:
      raise ValueError(f"--prompts {args.prompts}: not UTF-8 text ({e})") from None
    found = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not found:
      raise ValueError(f"--prompts {args.prompts}: holds no prompt")
    prompts += found
  if any(not p.strip() for p in prompts):
    raise ValueError("--prompt is empty")
  return prompts


def cmd_generate(args) -> int:
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx
  from rf_jax import checkpoint, pipeline
  from rf_jax.model import CausalWanDiT
  from rf_jax.generate import GenerateSpec, generate, load_text_embeddings
  from rf_jax.memory import policy_from_dict
  from rf_jax.sampling import Sampler
  from rf_jax.text.encode import default_cache_dir, pad_embeddings
  if os.path.exists(args.out) and not args.force:
    raise FileExistsError(f"{os.path.abspath(args.out)} already exists; pass --force to replace it")
  setup_compile_cache(args)
  prompts = read_prompts(args)
  if prompts and args.text_embeddings:
    raise ValueError("give text as --prompt/--prompts or as --text-embeddings, not both")
  demo_info = None
  if args.checkpoint is None and args.preset is None:  # the built-in demo model
    from rf_jax import demo
    demo_info = demo.load_info()
    if prompts or args.text_embeddings:
      raise ValueError("the built-in demo model is unconditional (trained without text); --prompt and "
                       "--text-embeddings need --checkpoint or --preset")
  # Without --memory: the demo's own memory (demo.json) for the demo, Relax Forcing's defaults otherwise; the memory
  # flags given override its settings.
  if args.memory is None and demo_info is not None and "memory" in demo_info:
    block = dict(demo_info["memory"])
  else:
    block = {"policy": args.memory or "relax"}
  for attr, key in _POLICY_FLAGS.items():
    if getattr(args, attr) is not None:
      block[key] = getattr(args, attr)
  policy = policy_from_dict(block, source="--memory options")
  sources = pipeline.resolve_sources(args.checkpoint, args.preset, text_encoder=args.text_encoder,
                                     tokenizer=args.tokenizer, vae=args.vae)
  if demo_info is not None:
    dit_config = ModelConfig.from_dict(demo_info["model"], source="the demo model")
  else:
    dit_config = checkpoint.load_config(sources.dit, "dit") if sources.dit else resolve_config(args.preset)
  sampling = (demo_info or {}).get("sampler", {})
  sampler = Sampler.from_steps(args.steps or sampling.get("steps", [1000, 750, 500, 250]), warp=not args.no_warp,
                               shift=args.shift or sampling.get("shift", 5.0), context_noise=args.context_noise,
                               chunk_frames=args.chunk_frames,
                               eta=args.eta if args.eta is not None else sampling.get("eta", 1.0))
  # Pixel-space models (the demo, and what `rf-jax train` makes: RGB in and out) are unconditional: zero text.
  pixels = demo_info is not None or dit_config.out_dim == 3
  mesh = setup_parallel(args)
  text, text_info = None, {}
  if prompts:  # encode first: the text encoder is dropped before the DiT is loaded
    encoder = pipeline.prompt_encoder(sources, dit_config, seed=args.seed,
                                      cache_dir=None if args.no_text_cache else args.text_cache or default_cache_dir())
    text = pad_embeddings(encoder(prompts), dit_config.text_len)
    text_info = {"text_encoder": sources.umt5, "tokenizer": sources.tokenizer, "text_cache": encoder.cache_dir,
                 "prompts_encoded": encoder.encoded, "prompts_cached": len(set(prompts)) - encoder.encoded}
    del encoder
  elif args.text_embeddings:
    text = load_text_embeddings(args.text_embeddings, args.batch, dit_config.text_len, dit_config.text_dim)
  elif pixels:
    text = np.zeros((args.batch, dit_config.text_len, dit_config.text_dim), np.float32)
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.compute_dtype]
  if demo_info is not None:
    from rf_jax import demo
    model, _ = demo.load_demo(dtype=dtype, attn_impl=args.attention)
    source = {"demo": demo.ASSET_DIR, "trained": demo_info.get("trained")}
  elif sources.dit:
    model = checkpoint.load_model(sources.dit, dtype=dtype, attn_impl=args.attention,
                                  shardings=None if mesh is None else param_shardings(mesh))
    source = {"checkpoint": os.path.abspath(args.checkpoint)}
  else:
    model = CausalWanDiT(dit_config, dtype=dtype, attn_impl=args.attention, rngs=nnx.Rngs(args.seed))
    source = {"preset": args.preset, "weights": f"random (seed {args.seed})"}
  vae = None
  if not args.no_video and not pixels:
    if sources.vae is None:
      print("rf-jax generate: no VAE (give --vae DIR or a pipeline --checkpoint): writing latents only",
            file=sys.stderr)
    else:
      vae = pipeline.load_vae(sources.vae, dit_config, seed=args.seed)
      source["vae"] = sources.vae
  if args.latent_hw:
    latent_hw = tuple(args.latent_hw)
  elif demo_info is not None:
    latent_hw = tuple(demo_info["frame_hw"])
  else:
    latent_hw = (8, 8) if args.preset == "tiny" and not args.checkpoint else (60, 104)
  frames = args.frames if args.frames is not None else (demo_info["default_frames"] if demo_info else 21)
  batch = args.batch if not prompts else min(args.batch, len(prompts))
  scale = args.video_scale or (8 if pixels else 1)
  spec = GenerateSpec(frames=frames, seed=args.seed, batch=batch, latent_hw=latent_hw, fps=args.fps,
                      video_scale=scale)
  summary = generate(model, policy, sampler, spec, args.out, text_embeddings=text, prompts=prompts or None,
                     vae=vae, pixels=pixels and not args.no_video, force=args.force, progress=not args.quiet,
                     mesh=mesh, extra_summary={"source": source, **text_info})
  import jax
  if jax.process_index():
    return 0
  print(json.dumps({k: summary[k] for k in ("frames", "samples", "chunks", "compile_count", "chunk_step_from",
                                            "seconds", "peak_bytes", "peak_bytes_source")}
                   | {"video": (summary["video"] or {}).get("files"), "out": os.path.abspath(args.out)}))
  return 0


def cmd_sweep(args) -> int:
  from rf_jax.sweep import load_sweep, run_sweep
  setup_compile_cache(args)
  mesh = setup_parallel(args)
  sweep = load_sweep(args.sweep)
  result = run_sweep(sweep, args.out, mesh=mesh, progress=not args.quiet)
  import jax
  if jax.process_index() == 0:
    print(json.dumps({**result, "out": os.path.abspath(args.out)}))
  return 0


def cmd_train(args) -> int:
  from rf_jax.train import load_train_config, train
  cfg = load_train_config(args.config)
  mesh = setup_parallel(args)
  result = train(cfg, args.out, mesh=mesh, progress=not args.quiet)
  import jax
  if jax.process_index() == 0:
    print(json.dumps(result))
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="rf-jax", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("convert", help="convert PyTorch weights (a DiT, umT5, the VAE, or a whole Wan folder) into "
                     "rf_jax (orbax) checkpoints")
  p.add_argument("src", help="a whole Wan model folder (DiT + umT5 + VAE + tokenizer -> a pipeline folder), or one "
                 "model's weights: .safetensors, *.safetensors.index.json, a folder of DiT weights, or .pt/.pth")
  p.add_argument("out", help="folder to write")
  p.add_argument("--config", help=f"DiT config: a preset ({', '.join(sorted(PRESETS))}) or a config.json; default: "
                 "the config.json inside the Wan model folder (umT5 and VAE configs are read off the weights)")
  p.add_argument("--dit", help="with a Wan folder: take the DiT from this file instead (e.g. self_forcing_dmd.pt)")
  p.add_argument("--weights", choices=["generator_ema", "generator", "model", "state_dict"],
                 help="entry of a .pt checkpoint to read (default: generator_ema when present)")
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                 help="store DiT and umT5 matrices in this dtype (biases, norms and modulation stay float32; a Wan "
                      "folder's VAE keeps its own); default: as stored")
  p.add_argument("--force", action="store_true", help="replace an existing OUT")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(func=cmd_convert)

  p = sub.add_parser("inspect", help="print a checkpoint's (or a preset's) config, parameter count and dtypes")
  p.add_argument("ckpt", nargs="?", help="rf_jax checkpoint folder")
  p.add_argument("--preset", help="count a preset's parameters through jax.eval_shape instead (DiT presets, "
                 "umt5-xxl, umt5-tiny, wan2.1-vae, vae-tiny)")
  p.set_defaults(func=cmd_inspect)

  p = sub.add_parser("check-reference", help="compare the port with a folder of PyTorch reference outputs")
  p.add_argument("dir")
  p.add_argument("--tolerance", type=float, default=1e-4,
                 help="relative-error threshold for forward-pass arrays (default 1e-4)")
  p.add_argument("--abs-tolerance", type=float, default=1e-5,
                 help="max-absolute-difference threshold for rollout arrays (default 1e-5)")
  p.set_defaults(func=cmd_check_reference)

  p = sub.add_parser("generate", help="generate a video's latents autoregressively with a KV-memory policy")
  src = p.add_mutually_exclusive_group()
  src.add_argument("--checkpoint", help="rf_jax DiT checkpoint, or a pipeline folder (a Wan folder converted by "
                   "`rf-jax convert`: DiT, text encoder, tokenizer and VAE)")
  src.add_argument("--preset", help="random weights of a preset (tiny: with a random tiny text encoder, VAE and a "
                   "built-in byte tokenizer); with neither --checkpoint nor --preset: the built-in demo model")
  p.add_argument("--memory", choices=["window", "relax", "slow_fast"],
                 help="the KV-memory policy (default: relax; for the built-in demo, the memory in its demo.json)")
  g = p.add_argument_group("memory options (each policy takes its own; see README)")
  g.add_argument("--window-frames", type=int, help="window: frames attended incl. the chunk; -1 = all")
  g.add_argument("--sink-frames", type=int, help="window / relax / slow_fast: frames kept from the start")
  g.add_argument("--positions", help="window: absolute|relocated_sink|window_relative; relax: hybrid|absolute")
  g.add_argument("--history-frames", type=int, help="relax: history frames picked per chunk (default 1)")
  g.add_argument("--tail-frames", type=int, help="relax: frames right before the chunk (default 1)")
  g.add_argument("--num-candidates", type=int, help="relax: history candidates per chunk (default 4)")
  g.add_argument("--lambda", dest="lam", type=float, help="relax: redundancy weight (default 2.0)")
  g.add_argument("--reservoir-frames", type=int, help="relax: candidate reservoir incl. the chunk (default 120)")
  g.add_argument("--selection", help="relax: per_sample (default) | batch0 (upstream: sample 0 picks for all)")
  g.add_argument("--slow-frames", type=int, help="slow_fast: promoted-frame capacity (default 12)")
  g.add_argument("--fast-frames", type=int, help="slow_fast: recent window incl. the chunk (default 6)")
  g.add_argument("--rope-length", type=int, help="slow_fast: positions stay below this (default 21)")
  g.add_argument("--threshold", type=float, help="slow_fast: promote when similarity < threshold (default 0.95)")
  g.add_argument("--mode", help="slow_fast: clean (default) | upstream")
  p.add_argument("--frames", type=int, help="latent frames (default 21; the demo: 480 = 30 s at 16 fps)")
  p.add_argument("--seed", type=int, default=0, help="noise (and, without a checkpoint, weights and text)")
  t = p.add_argument_group("text and video (a pipeline --checkpoint supplies the text encoder, tokenizer and VAE)")
  t.add_argument("--prompt", action="append", help="a text prompt (repeat for several videos)")
  t.add_argument("--prompts", help="a UTF-8 file of prompts, one per line (# comments and blank lines skipped)")
  t.add_argument("--text-embeddings", help=".npy of umT5 embeddings [P, text_dim] or [B, P, text_dim]")
  t.add_argument("--text-encoder", help="umT5 checkpoint folder (from `rf-jax convert`)")
  t.add_argument("--tokenizer", help="folder holding the umT5 tokenizer.json (e.g. Wan's google/umt5-xxl)")
  t.add_argument("--text-cache", help="where encoded prompts are kept (default $RF_JAX_CACHE/text or "
                 "~/.cache/rf_jax/text)")
  t.add_argument("--no-text-cache", action="store_true", help="encode every prompt, keep nothing")
  t.add_argument("--vae", help="Wan VAE checkpoint folder: decode to mp4 during the rollout")
  t.add_argument("--no-video", action="store_true", help="write latents only (no VAE decode)")
  t.add_argument("--fps", type=int, default=16, help="mp4 frame rate (default 16, Wan's)")
  t.add_argument("--video-scale", type=int, help="upscale written frames N times (default 1; 8 for pixel-space "
                 "models such as the demo)")
  p.add_argument("--batch", type=int, default=1, help="samples per compiled rollout (with several prompts: at most "
                 "this many at once)")
  p.add_argument("--latent-hw", type=int, nargs=2, metavar=("H", "W"),
                 help="latent size (default 60 104 = 480x832 video; 8 8 for the tiny preset)")
  p.add_argument("--chunk-frames", type=int, default=3)
  p.add_argument("--steps", type=float, nargs="+",
                 help="denoising steps (raw; warped through the schedule unless --no-warp; default 1000 750 500 250, "
                      "the demo: its fitted sampler)")
  p.add_argument("--no-warp", action="store_true", help="use --steps as model timesteps directly")
  p.add_argument("--eta", type=float, help="re-noising between steps: 1 = fresh noise (the reference's, for "
                 "distilled models; default), 0 = the flow ODE's Euler step (the demo's)")
  p.add_argument("--shift", type=float, help="timestep shift of the flow schedule (default 5; the demo: its own)")
  p.add_argument("--context-noise", type=float, default=0.0, help="timestep of the cache-refill call")
  p.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--attention", default="auto", choices=ATTENTION_BACKENDS,
                 help="attention backend; auto picks per platform (README, Benchmarks); env RF_JAX_ATTENTION "
                      "overrides auto")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--force", action="store_true", help="replace an existing --out")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  add_parallel_flags(p)
  add_compile_cache_flags(p)
  p.set_defaults(func=cmd_generate)

  p = sub.add_parser("sweep", help="run (or resume) a grid of memory settings x prompts x seeds into a zarr store")
  p.add_argument("sweep", help="a sweep file defining SWEEP = rf_jax.sweep.Sweep(...), e.g. configs/sweeps/tiny.py")
  p.add_argument("--out", required=True, help="output folder; an unfinished sweep there is resumed")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  add_parallel_flags(p)
  add_compile_cache_flags(p)
  p.set_defaults(func=cmd_sweep)

  p = sub.add_parser("train", help="train the causal DiT (flow matching, AdamW, EMA); resumes an unfinished --out")
  p.add_argument("config", help="a config file defining TRAIN = rf_jax.train.TrainConfig(...), e.g. "
                 "configs/train/demo.py")
  p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, loss.png, model/")
  p.add_argument("--quiet", action="store_true", help="no progress line")
  add_parallel_flags(p)
  p.set_defaults(func=cmd_train)

  p = sub.add_parser("forward", help="block-causal forward of a model on seeded random inputs (smoke run)")
  src = p.add_mutually_exclusive_group()
  src.add_argument("--checkpoint", help="rf_jax checkpoint folder")
  src.add_argument("--preset", default="tiny", help="random weights of a preset (default tiny)")
  p.add_argument("--frames", type=int, default=6)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--latent-hw", type=int, nargs=2, default=(8, 8), metavar=("H", "W"))
  p.add_argument("--chunk-frames", type=int, default=3)
  p.add_argument("--timestep", type=float, default=1000.0)
  p.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--attention", default="auto", choices=ATTENTION_BACKENDS,
                 help="attention backend; auto picks per platform (README, Benchmarks); env RF_JAX_ATTENTION "
                      "overrides auto")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="out/forward")
  p.add_argument("--force", action="store_true", help="replace an existing --out")
  p.set_defaults(func=cmd_forward)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  try:
    return args.func(args)
  except (ValueError, FileExistsError, FileNotFoundError) as e:
    print(f"rf-jax {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
