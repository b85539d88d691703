"""Rollout benchmark: compile time, steady-state time per chunk and memory of each memory policy.

Prints one JSON line per (policy, frames): device, versions, commit, the attention backend, compile seconds (the
first chunk, apart), the median seconds of the chunks after the memory's warm-up, latent frames per second and video
frames per second (4 video frames per latent frame, as the Wan VAE decodes), the model FLOPs of a steady chunk
(`rf_jax.cost.analytic_chunk_flops`: the matmuls of the keys the policy attends, the refill's keys only) and the
model-FLOPs utilisation against --peak-tflops, the memory state's bytes, and peak memory (device where
reported, else host RSS). Memory that stays flat as videos grow shows as the same state_bytes for every --frames (the host
RSS peak is a lifetime maximum of the process, so compare it across separate runs, as `rf-jax generate` does).

  .venv/bin/python scripts/bench_rollout.py --preset tiny --latent-hw 8 8 --frames 200 2000
  .venv/bin/python scripts/bench_rollout.py --config /tmp/torch_ref_cases/sf_w21/config.json --latent-hw 16 26 \
      --frames 36 --prompt-tokens 24                        # the torch_ref harness's `bench` model, random weights
  .venv/bin/python scripts/bench_rollout.py --checkpoint ckpt/sf_dmd --compute-dtype bfloat16 --frames 120 240
  python scripts/bench_rollout.py --preset wan2.1-t2v-1.3b --latent-hw 60 104 --compute-dtype bfloat16 \
      --param-dtype bfloat16 --frames 30 --attention pallas_gpu            # the real 1.3B shapes, random weights
"""

from __future__ import annotations

import argparse
import json
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rf_jax import checkpoint
from rf_jax.config import from_constructor_args, get_preset
from rf_jax.runinfo import git_commit, peak_bytes
from rf_jax.memory import RelaxPolicy, SlowFastPolicy, WindowPolicy
from rf_jax.model import CausalWanDiT
from rf_jax.ops import AttnImpl, resolve
from rf_jax.cost import analytic_chunk_flops, attended_frames
from rf_jax.sampling import Rollout, Sampler, text_rows

POLICIES = {
    "self_forcing_window21": WindowPolicy(window_frames=21),
    "relax": RelaxPolicy(),
    "slow_fast": SlowFastPolicy(),
}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="tiny")
  p.add_argument("--config", help="a config.json with constructor_args (a fixture's, or a torch_ref case's), random "
                                  "weights; instead of --preset")
  p.add_argument("--checkpoint")
  p.add_argument("--latent-hw", type=int, nargs=2, default=(8, 8))
  p.add_argument("--frames", type=int, nargs="+", default=[200, 2000])
  p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
  p.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--param-dtype", choices=["float32", "bfloat16"], default="float32")
  p.add_argument("--attention", default="auto", choices=[i.value for i in AttnImpl])
  p.add_argument("--prompt-tokens", type=int, help="rows of the random prompt that are used (default all; the rest "
                                                   "are zero, as Wan pads a prompt)")
  p.add_argument("--steps", type=int, default=4, help="denoising steps per chunk (plus one clean refill call)")
  p.add_argument("--peak-tflops", type=float, default=989.0,
                 help="the device's dense peak for the compute dtype, for MFU (H100/H200 SXM bf16: 989)")
  args = p.parse_args()
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  dtype = dtypes[args.compute_dtype]
  if args.config:
    with open(args.config) as f:
      config = from_constructor_args(json.load(f)["constructor_args"])
  else:
    config = get_preset(args.preset)
  model = (checkpoint.load_model(args.checkpoint, dtype=dtype, attn_impl=args.attention) if args.checkpoint
           else CausalWanDiT(config, dtype=dtype, param_dtype=dtypes[args.param_dtype], attn_impl=args.attention,
                             rngs=nnx.Rngs(0)))
  cfg = model.config
  context = jax.random.normal(jax.random.key(1), (1, cfg.text_len, cfg.text_dim))
  if args.prompt_tokens is not None:  # a prompt of that many tokens, zero rows after it (Wan's padding)
    context = context.at[:, args.prompt_tokens:].set(0)
  for name in args.policies:
    for frames in args.frames:
      frames = -(-frames // 3) * 3
      sampler = Sampler.from_steps(_steps(args.steps))
      r = Rollout(model, POLICIES[name], sampler, batch=1, latent_hw=tuple(args.latent_hw), frames=frames)
      text = r.text_kv(context)
      state = r.init_state()
      key = jax.random.key(0)
      state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
      times = []
      for j in range(r.num_chunks):
        t0 = time.perf_counter()
        state, out = r.step(state, text, j, *r.noise(key, j))
        jax.block_until_ready(out.latents)
        times.append(time.perf_counter() - t0)
      peak, source = peak_bytes()
      steady = times[WARMUP_CHUNKS:] or times[1:] or times
      median = float(np.median(steady))
      f = r.sampler.chunk_frames
      q = (args.latent_hw[0] // cfg.patch_size[1]) * (args.latent_hw[1] // cfg.patch_size[2])
      rows = r.text_rows or text_rows(np.asarray(context))
      flops = analytic_chunk_flops(cfg, batch=1, frames=f, frame_tokens=q, steps=args.steps,
                                   memory_frames=min(attended_frames(POLICIES[name], f, frames), frames - f),
                                   prompt_keys=rows + 1 if rows < cfg.text_len else rows)["total"]
      print(json.dumps({
          "bench": "rollout", "policy": name, "frames": frames, "chunks": r.num_chunks,
          "model": args.checkpoint or args.config or args.preset, "latent_hw": list(args.latent_hw),
          "dtype": args.compute_dtype,
          "param_dtype": args.param_dtype, "attention": resolve(args.attention, dtype).value,
          "calls_per_chunk": args.steps + 1,
          "compile_seconds": round(times[0], 3), "compile_count": r.compile_count,
          "steady_median_seconds_per_chunk": round(median, 5),
          "latent_fps": round(f / median, 2), "video_fps": round(4 * f / median, 2),
          "steady_chunk_tflop": _sig(flops / 1e12), "achieved_tflops": _sig(flops / median / 1e12),
          "mfu": _sig(flops / median / 1e12 / args.peak_tflops),
          "state_bytes": state_bytes, "peak_bytes": peak, "peak_bytes_source": source,
          "device": str(jax.devices()[0]), "jax": jax.__version__, "flax": flax.__version__, "commit": git_commit()}), flush=True)


WARMUP_CHUNKS = 3  # the first chunk compiles; relax's memory is dense for chunks 0-1 and relaxed from chunk 2


def _sig(x: float) -> float:
  return float(f"{x:.3g}")


def _steps(n):
  return {4: (1000, 750, 500, 250), 3: (1000, 757, 522), 2: (1000, 500), 1: (1000,)}[n]


if __name__ == "__main__":
  main()
