"""The `rf-jax` command line: convert, inspect, check-reference, generate, sweep, train, forward. Each command parses
its arguments into the library's typed settings and calls one library function; the library never imports this."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Sequence

from rf_jax.config import PRESETS, ComputeDtype
from rf_jax.demo import Demo
from rf_jax.memory import POLICIES, SETTINGS, public_name
from rf_jax.ops import AttnImpl
from rf_jax.sampling import Recache


def _mesh(args):
  from rf_jax.parallel.placement import setup_mesh
  return setup_mesh(args.mesh, coordinator=args.coordinator, num_processes=args.num_processes,
                    process_id=args.process_id, distributed=args.distributed)


def _leader_prints(obj) -> None:
  import jax
  print(json.dumps(obj)) if jax.process_index() == 0 else None


def cmd_convert(args) -> int:
  from rf_jax.convert.wan_folder import convert_source
  print(json.dumps(convert_source(args.src, args.out, dit=args.dit, weights=args.weights, config=args.config,
                                  dtype=args.dtype, force=args.force, progress=not args.quiet,
                                  check_finite=args.check_finite)))
  return 0


def cmd_inspect(args) -> int:
  from rf_jax.pipeline import inspect_parameters
  print(inspect_parameters(args.ckpt, preset=args.preset, verify=args.verify))
  return 0


def cmd_check_reference(args) -> int:
  from rf_jax.reference import check_reference, summarize
  results, notes = check_reference(args.dir, tolerance=args.tolerance, abs_tolerance=args.abs_tolerance)
  for note in notes:
    print(f"note: {note}", file=sys.stderr)
  print(json.dumps(summary := summarize(results)))
  return 0 if summary["passed"] else 1


def cmd_forward(args) -> int:
  from rf_jax.pipeline import DiTSource
  from rf_jax.smoke import forward_smoke
  s = forward_smoke(DiTSource.of(args.checkpoint, args.preset, seed=args.seed), args.out, frames=args.frames,
                    batch=args.batch, latent_hw=tuple(args.latent_hw), chunk_frames=args.chunk_frames,
                    timestep=args.timestep, dtype=ComputeDtype(args.compute_dtype),
                    attention=AttnImpl(args.attention), seed=args.seed, force=args.force)
  print(f"wrote {os.path.abspath(args.out)}: flow {tuple(s['flow_shape'])}, first call {s['first_call_seconds']:.2f}s "
        f"(compile + run), then {s['steady_seconds'] * 1e3:.1f} ms")
  return 0


def cmd_generate(args) -> int:
  from rf_jax import compile_cache
  from rf_jax.generate import GenerateRequest, generate_request, prompt_schedule
  from rf_jax.pipeline import DiTSource
  from rf_jax.text.encode import read_prompts
  if os.path.exists(args.out) and not args.force:
    raise FileExistsError(f"{os.path.abspath(args.out)} already exists; pass --force to replace it")
  settings = {f: getattr(args, f) for f in SETTINGS if getattr(args, f) is not None}
  prompts, switches, cuts = prompt_schedule(read_prompts(args.prompt or (), args.prompts), args.switch,
                                            args.prompt_schedule, args.cut)
  req = GenerateRequest(
      source=DiTSource.of(args.checkpoint, args.preset, seed=args.seed, demo=args.demo and Demo(args.demo)),
      memory=args.memory,
      memory_settings=settings, frames=args.frames, seed=args.seed, batch=args.batch,
      latent_hw=tuple(args.latent_hw) if args.latent_hw else None, chunk_frames=args.chunk_frames,
      steps=tuple(args.steps) if args.steps else None, warp=not args.no_warp, eta=args.eta, shift=args.shift,
      context_noise=args.context_noise, compute_dtype=ComputeDtype(args.compute_dtype),
      attention=AttnImpl(args.attention), prompts=tuple(prompts), switches=switches, cut_frames=cuts, recache=args.recache and Recache(args.recache),
      global_sink=not args.no_global_sink, image=args.image, init_video=args.init_video, init_latents=args.init_latents,
      text_embeddings=args.text_embeddings, text_encoder=args.text_encoder, tokenizer=args.tokenizer,
      text_cache=args.text_cache, use_text_cache=not args.no_text_cache, vae=args.vae, video=not args.no_video,
      fps=args.fps, video_scale=args.video_scale, resume=args.resume, save_every=args.save_every)
  compile_cache.setup(args.compile_cache, args.no_compile_cache)
  s = generate_request(req, args.out, force=args.force, progress=not args.quiet, mesh=_mesh(args))
  _leader_prints({k: s[k] for k in ("frames", "samples", "chunks", "compile_count", "chunk_step_from", "seconds",
                                    "peak_bytes", "peak_bytes_source")}
                 | {"video": (s["video"] or {}).get("files"), "out": os.path.abspath(args.out)})
  return 0


def cmd_sweep(args) -> int:
  from rf_jax import compile_cache
  from rf_jax.sweep import load_sweep, run_sweep
  compile_cache.setup(args.compile_cache, args.no_compile_cache)
  sweep = load_sweep(args.sweep)
  _leader_prints({**run_sweep(sweep, args.out, mesh=_mesh(args), progress=not args.quiet),
                  "out": os.path.abspath(args.out)})
  return 0


def cmd_train(args) -> int:
  from rf_jax.train import load_train_config, train
  cfg = load_train_config(args.config)
  _leader_prints(train(cfg, args.out, mesh=_mesh(args), progress=not args.quiet))
  return 0


def _run_flags(p, *, compile_cache: bool = True) -> None:
  """--quiet, the mesh and process flags, and the compilation cache."""
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  g = p.add_argument_group("devices and hosts (see README, Running on a mesh)")
  g.add_argument("--mesh", help="device mesh, e.g. data=2,tensor=4 (axes data, fsdp, tensor; product = devices)")
  g.add_argument("--coordinator", help="HOST:PORT of process 0, to run as one of several processes")
  g.add_argument("--num-processes", type=int, help="with --coordinator: how many processes")
  g.add_argument("--process-id", type=int, help="with --coordinator: this process's index")
  g.add_argument("--distributed", action="store_true",
                 help="initialise jax.distributed from the cluster (TPU pods: automatic; SLURM, Open MPI)")
  if compile_cache:
    g = p.add_argument_group("compilation cache (see README)")
    g.add_argument("--compile-cache", metavar="DIR", help="keep compiled steps here (default $RF_JAX_COMPILE_CACHE, "
                   "$JAX_COMPILATION_CACHE_DIR, $RF_JAX_CACHE/jax or ~/.cache/rf_jax/jax)")
    g.add_argument("--no-compile-cache", action="store_true", help="compile everything afresh, keep nothing")


def _model_flags(p, *, preset_default: str | None) -> None:
  p.add_argument("--compute-dtype", choices=[d.value for d in ComputeDtype], default=ComputeDtype.FLOAT32.value)
  p.add_argument("--attention", default=AttnImpl.AUTO.value, choices=[i.value for i in AttnImpl],
                 help="attention backend; auto picks per platform (README, Benchmarks); env RF_JAX_ATTENTION "
                      "overrides auto")
  p.add_argument("--out", required=preset_default is None, default=None if preset_default is None
                 else "out/forward", help="output folder")
  p.add_argument("--force", action="store_true", help="replace an existing --out")


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="rf-jax", description=__doc__.split("\n")[0])
  parser.add_argument("--debug", action="store_true", help="show the traceback of any error")
  sub = parser.add_subparsers(dest="command", required=True)

  p = sub.add_parser("convert", help="PyTorch weights (a DiT, umT5, the VAE, or a whole Wan folder) -> rf_jax")
  p.add_argument("src", help="a whole Wan model folder (-> a pipeline folder), or one model's weights: .safetensors, "
                 "*.safetensors.index.json, a folder of DiT weights, or .pt/.pth")
  p.add_argument("out", help="folder to write")
  p.add_argument("--config", help=f"DiT config: a preset ({', '.join(sorted(PRESETS))}) or a config.json; default: "
                 "the Wan folder's config.json (umT5 and VAE configs are read off the weights)")
  p.add_argument("--dit", help="with a Wan folder: take the DiT from this file instead (e.g. self_forcing_dmd.pt)")
  p.add_argument("--weights", choices=["generator_ema", "generator", "model", "state_dict"],
                 help="entry of a .pt checkpoint to read (default: generator_ema when present)")
  p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="store DiT and umT5 matrices in this "
                 "dtype (biases, norms, modulation stay float32; the VAE keeps its own); default: as stored")
  p.add_argument("--force", action="store_true", help="replace an existing OUT")
  p.add_argument("--check-finite", action="store_true", help="refuse a source tensor holding NaN or infinity")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(func=cmd_convert)

  p = sub.add_parser("inspect", help="a checkpoint's (or a preset's) config, parameter count and dtypes")
  p.add_argument("ckpt", nargs="?", help="rf_jax checkpoint folder")
  p.add_argument("--preset", help="a preset's shapes instead (DiT presets, umt5-xxl, umt5-tiny, wan2.1-vae, vae-tiny)")
  p.add_argument("--verify", action="store_true", help="read every array: shapes, dtypes and finite values")
  p.set_defaults(func=cmd_inspect)

  p = sub.add_parser("check-reference", help="compare the port with a folder of PyTorch reference outputs")
  p.add_argument("dir")
  p.add_argument("--tolerance", type=float, default=1e-4, help="relative error of forward arrays (default 1e-4)")
  p.add_argument("--abs-tolerance", type=float, default=1e-5, help="max |difference| of rollout arrays (1e-5)")
  p.set_defaults(func=cmd_check_reference)

  p = sub.add_parser("generate", help="generate a video autoregressively with a KV-memory policy")
  src = p.add_mutually_exclusive_group()
  src.add_argument("--checkpoint", help="rf_jax DiT checkpoint, or a pipeline folder (a converted Wan folder)")
  src.add_argument("--preset", help="random weights of a preset (tiny: with a random text encoder, VAE and byte "
                   "tokenizer); with neither --checkpoint nor --preset: the built-in demo model")
  src.add_argument("--demo", choices=[d.value for d in Demo],
                   help="which built-in demo model (default shapes, unconditional; backdrop: reads a one-word prompt, "
                   "the backdrop colour: black, blue, green, red or purple)")
  p.add_argument("--memory", choices=list(POLICIES), help="the KV-memory policy (default relax; the demo: its own)")
  g = p.add_argument_group("memory options (each policy takes its own; see README)")
  for field, (kind, text) in SETTINGS.items():  # flags only set what is given; a policy refuses what it lacks
    g.add_argument("--" + public_name(field).replace("_", "-"), dest=field, type=kind, help=text)
  p.add_argument("--frames", type=int, help="latent frames (default 21; the demo: 480 = 30 s at 16 fps)")
  p.add_argument("--seed", type=int, default=0, help="noise (and, without a checkpoint, weights and text)")
  t = p.add_argument_group("text and video (a pipeline --checkpoint supplies the text encoder, tokenizer and VAE)")
  for flag, kw in (("--prompt", dict(action="append", help="a text prompt (repeat for several videos)")),
                   ("--prompts", dict(help="a UTF-8 file of prompts, one per line (# comments, blank lines skipped)")),
                   ("--text-embeddings", dict(help=".npy of umT5 embeddings [P, text_dim] or [B, P, text_dim]")),
                   ("--text-encoder", dict(help="umT5 checkpoint folder (from `rf-jax convert`)")),
                   ("--tokenizer", dict(help="folder holding the umT5 tokenizer.json (e.g. Wan's google/umt5-xxl)")),
                   ("--text-cache", dict(help="where encoded prompts are kept (default $RF_JAX_CACHE/text)")),
                   ("--no-text-cache", dict(action="store_true", help="encode every prompt, keep nothing")),
                   ("--vae", dict(help="Wan VAE checkpoint folder: decode to mp4 during the rollout")),
                   ("--no-video", dict(action="store_true", help="write latents only (no VAE decode)")),
                   ("--fps", dict(type=int, default=16, help="mp4 frame rate (default 16, Wan's)")),
                   ("--video-scale", dict(type=int, help="upscale written frames N times (default 1; 8 for pixels)")),
                   ("--switch", dict(action="append", metavar="FRAME:TEXT", help="from latent FRAME on, this prompt "
                                     "(repeat; the memory is re-cached, see --recache)")),
                   ("--cut", dict(action="append", metavar="FRAME:TEXT", help="a --switch that is a scene cut "
                                  "(infinity_rope: KV Flush + RoPE Cut)")),
                   ("--prompt-schedule", dict(metavar="FILE", help='a JSON list of {"frame": F, "prompt": TEXT}')),
                   ("--recache", dict(choices=[r.value for r in Recache], help="at a switch: which frames re-run "
                                      "with the new prompt (default: window's window, relax's all_memory, infinity_rope's flush)")),
                   ("--no-global-sink", dict(action="store_true", help="a re-cache rebuilds the sink too")),
                   ("--image", dict(help="image-to-video: this image (png, jpg, ...) is the first frame")),
                   ("--init-video", dict(help="extend this video (mp4): its frames come first")),
                   ("--init-latents", dict(help="start from these latents (.npy [n, C, H, W], latents.npy's)")),
                   ("--resume", dict(action="store_true", help="continue the killed run of --out from its last save")),
                   ("--save-every", dict(type=int, default=8, metavar="K", help="save a resume point every K chunks "
                                         "(default 8; 0: none)"))):
    t.add_argument(flag, **kw)
  p.add_argument("--batch", type=int, default=1, help="samples per compiled rollout (with prompts: at most this many)")
  p.add_argument("--latent-hw", type=int, nargs=2, metavar=("H", "W"),
                 help="latent size (default 60 104 = 480x832 video; 8 8 for the tiny preset)")
  p.add_argument("--chunk-frames", type=int, default=3)
  p.add_argument("--steps", type=float, nargs="+", help="denoising steps (warped unless --no-warp; default "
                 "1000 750 500 250, the demo: its fitted sampler)")
  p.add_argument("--no-warp", action="store_true", help="use --steps as model timesteps directly")
  p.add_argument("--eta", type=float, help="re-noising: 1 = fresh noise (distilled models; default), 0 = Euler")
  p.add_argument("--shift", type=float, help="timestep shift of the flow schedule (default 5; the demo: its own)")
  p.add_argument("--context-noise", type=float, default=0.0, help="timestep of the cache-refill call")
  _model_flags(p, preset_default=None)
  _run_flags(p)
  p.set_defaults(func=cmd_generate)

  p = sub.add_parser("sweep", help="run (or resume) a grid of memory settings x prompts x seeds into a zarr store")
  p.add_argument("sweep", help="a sweep file defining SWEEP = rf_jax.sweep.Sweep(...), e.g. configs/sweeps/tiny.py")
  p.add_argument("--out", required=True, help="output folder; an unfinished sweep there is resumed")
  _run_flags(p)
  p.set_defaults(func=cmd_sweep)

  p = sub.add_parser("train", help="train the causal DiT (flow matching, AdamW, EMA); resumes an unfinished --out")
  p.add_argument("config", help="a file defining TRAIN = rf_jax.train.TrainConfig(...), e.g. configs/train/demo.py")
  p.add_argument("--out", required=True, help="run folder: checkpoints, metrics.jsonl, loss.png, model/")
  _run_flags(p, compile_cache=False)
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
  p.add_argument("--seed", type=int, default=0)
  _model_flags(p, preset_default="tiny")
  p.set_defaults(func=cmd_forward)
  return parser


USER_ERRORS = (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
  """Exit status 0 on success; 2 and one line naming the problem for a user's mistake; 1 and one line for anything
  else (a bug: `--debug` shows its traceback); 130 on Ctrl-C."""
  args = build_parser().parse_args(argv)
  if not args.debug:  # orbax's and absl's warnings would come before the one line that names the problem
    import logging
    logging.getLogger("absl").setLevel(logging.ERROR)
  try:
    return args.func(args)
  except USER_ERRORS as e:
    if args.debug:
      raise
    print(f"rf-jax {args.command}: error: {_one_line(e)}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"rf-jax {args.command}: interrupted", file=sys.stderr)
    return 130
  except Exception as e:  # noqa: BLE001  a bug: one line, the traceback with --debug
    if args.debug:
      raise
    print(f"rf-jax {args.command}: internal error: {type(e).__name__}: {_one_line(e)} (run with --debug for the "
          "traceback)", file=sys.stderr)
    return 1


def _one_line(e: BaseException) -> str:
  """The error's message on one line (a message listing several problems keeps them all, joined by "; ")."""
  lines = [re.sub(r"^\s*-\s+", "", ln).strip() for ln in str(e).strip().splitlines()]
  lines = [ln for ln in lines if ln]
  if not lines:
    return type(e).__name__
  return lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")


def entry() -> None:
  """The `rf-jax` console script: `main`, then exit. After an error, a process that used orbax leaves at once (its
  background threads would print tracebacks at interpreter teardown, after the one line that names the problem)."""
  code = main()
  if code and "orbax.checkpoint" in sys.modules:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
  sys.exit(code)


if __name__ == "__main__":
  entry()
