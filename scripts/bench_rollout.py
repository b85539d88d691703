"""Rollout benchmark: compile time, steady-state time per chunk and memory of each memory policy.

Prints one JSON line per (policy, frames): device, versions, commit, compile seconds (the first chunk, apart),
the median seconds of the following chunks, the memory state's bytes, and peak memory (device where reported,
else host RSS). Memory that stays flat as videos grow shows as the same state_bytes for every --frames (the host
RSS peak is a lifetime maximum of the process, so compare it across separate runs, as `rf-jax generate` does).

  .venv/bin/python scripts/bench_rollout.py --preset tiny --latent-hw 8 8 --frames 200 2000
  .venv/bin/python scripts/bench_rollout.py --checkpoint ckpt/sf_dmd --compute-dtype bfloat16 --frames 120 240
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
from rf_jax.config import get_preset
from rf_jax.runinfo import git_commit, peak_bytes
from rf_jax.memory import RelaxPolicy, SlowFastPolicy, WindowPolicy
from rf_jax.model import CausalWanDiT
from rf_jax.sampling import Rollout, Sampler

POLICIES = {
    "self_forcing_window21": WindowPolicy(window_frames=21),
    "relax": RelaxPolicy(),
    "slow_fast": SlowFastPolicy(),
}


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--preset", default="tiny")
  p.add_argument("--checkpoint")
  p.add_argument("--latent-hw", type=int, nargs=2, default=(8, 8))
  p.add_argument("--frames", type=int, nargs="+", default=[200, 2000])
  p.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
  p.add_argument("--compute-dtype", choices=["float32", "bfloat16"], default="float32")
  args = p.parse_args()
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[args.compute_dtype]
  model = (checkpoint.load_model(args.checkpoint, dtype=dtype) if args.checkpoint
           else CausalWanDiT(get_preset(args.preset), dtype=dtype, rngs=nnx.Rngs(0)))
  cfg = model.config
  context = jax.random.normal(jax.random.key(1), (1, cfg.text_len, cfg.text_dim))
  for name in args.policies:
    for frames in args.frames:
      frames = -(-frames // 3) * 3
      r = Rollout(model, POLICIES[name], Sampler.from_steps(), batch=1, latent_hw=tuple(args.latent_hw),
                  frames=frames)
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
      print(json.dumps({
          "bench": "rollout", "policy": name, "frames": frames, "chunks": r.num_chunks,
          "model": args.checkpoint or args.preset, "latent_hw": list(args.latent_hw), "dtype": args.compute_dtype,
          "compile_seconds": round(times[0], 3), "compile_count": r.compile_count,
          "steady_median_seconds_per_chunk": round(float(np.median(times[1:])), 5) if len(times) > 1 else None,
          "state_bytes": state_bytes, "peak_bytes": peak, "peak_bytes_source": source,
          "device": str(jax.devices()[0]), "jax": jax.__version__, "flax": flax.__version__, "commit": git_commit()}), flush=True)


if __name__ == "__main__":
  main()
