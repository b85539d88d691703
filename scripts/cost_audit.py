"""Cost audit of the chunk step, hardware-independent: lowers and compiles it with abstract inputs (nothing runs,
nothing is allocated) and prints one JSON line per (configuration, policy): the matmul FLOPs and bytes counted in
the optimized HLO (`rf_jax.cost.hlo_costs`: every loop body times its trip count) against the analytic minimum for
that policy (the keys it attends to, the refill's keys only), XLA's own module figures (which count each loop body
once) and the compile time.

    .venv/bin/python scripts/cost_audit.py                          # bench and 1.3B shapes, three policies
    .venv/bin/python scripts/cost_audit.py --configs bench --policies window21

Configurations: `bench` is ../shared/bench/torch_ref's (dim 384, 6 heads x 64, 4 layers, 16x26 latents = 104
tokens per frame, float32, 24 prompt rows -> 32 kept); `1.3b` the real Wan2.1-T2V-1.3B shapes (480x832 -> 60x104
latents = 1560 tokens per frame, 30 layers, bf16 parameters and compute, 128 prompt rows kept); `tiny` the test
preset. The memory is full and steady (window 21: 18 frames; relax: sink 2 + history 1 + tail 1; slow_fast: 3 + 12
+ 3), the memory loop's trip count the steps that many valid frames take.
"""

from __future__ import annotations

import argparse
import json
import time

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from rf_jax.config import ModelConfig, get_preset
from rf_jax.cost import (analytic_chunk_flops, attended_frames, hlo_costs, memory_entries, memory_loop_steps,
                         ratio)
from rf_jax.memory import RelaxPolicy, SlowFastPolicy, WindowPolicy
from rf_jax.model import CausalWanDiT
from rf_jax.runinfo import git_commit
from rf_jax.sampling import Rollout, Sampler

POLICIES = {"window21": WindowPolicy(window_frames=21), "relax": RelaxPolicy(), "slow_fast": SlowFastPolicy()}
BENCH = ModelConfig(dim=384, ffn_dim=1536, num_heads=6, num_layers=4, text_dim=1024, text_len=512, freq_dim=256)
CONFIGS = {  # name -> (model config, latent (H, W), dtype, prompt rows kept, frames)
    "bench": (BENCH, (16, 26), jnp.float32, 32, 240),
    "1.3b": (get_preset("wan2.1-t2v-1.3b"), (60, 104), jnp.bfloat16, 128, 240),
    "tiny": (get_preset("tiny"), (8, 8), jnp.float32, 32, 240),
}


def audit(config: str, policy_name: str, steps: int = 4) -> dict:
  cfg, latent_hw, dtype, rows, frames = CONFIGS[config]
  policy = POLICIES[policy_name]
  model = nnx.eval_shape(lambda: CausalWanDiT(cfg, dtype=dtype, param_dtype=dtype, attn_impl="reference",
                                              rngs=nnx.Rngs(0)))
  sampler = Sampler.from_steps((1000, 750, 500, 250)[:steps])
  rollout = Rollout(model, policy, sampler, batch=1, latent_hw=latent_hw, frames=frames, text_rows=rows)
  f = sampler.chunk_frames
  q = (latent_hw[0] // cfg.patch_size[1]) * (latent_hw[1] // cfg.patch_size[2])
  memory = attended_frames(policy, f, frames)
  entries = memory_entries(policy, f, frames)
  t0 = time.perf_counter()
  compiled = rollout.lower().compile()
  compile_s = time.perf_counter() - t0
  trips = memory_loop_steps(memory, q, entries)
  counted = hlo_costs(compiled.as_text(), dynamic_trips=trips)
  keys = rows + 1 if rows < cfg.text_len else rows
  minimum = analytic_chunk_flops(cfg, batch=1, frames=f, frame_tokens=q, steps=steps, memory_frames=memory,
                                 prompt_keys=keys)
  itemsize = jnp.dtype(dtype).itemsize
  params = sum(x.size for x in jax.tree.leaves(nnx.state(model))) * itemsize
  kv_frame = 2 * cfg.num_layers * q * cfg.dim * itemsize  # keys and values of one frame, every layer
  prompt = 2 * cfg.num_layers * keys * cfg.dim * itemsize
  # A perfectly fused step reads every weight, the attended memory and the prompt's keys once per call, and writes
  # the chunk's keys once.
  bytes_min = (steps + 1) * (params + memory * kv_frame + prompt) + f * kv_frame
  xla = compiled.cost_analysis()
  xla = xla[0] if isinstance(xla, list) else xla
  return {
      "audit": "chunk_step", "config": config, "policy": policy_name, "frame_tokens": q, "layers": cfg.num_layers,
      "dtype": jnp.dtype(dtype).name, "calls": steps + 1, "attended_memory_frames": memory,
      "prompt_keys": keys, "memory_loop_trips": trips, "unknown_trip_loops": counted.unknown_loops,
      "counted_tflop": _sig(counted.dot_flops / 1e12), "minimum_tflop": _sig(minimum["total"] / 1e12),
      "flops_ratio": round(ratio(counted.dot_flops, minimum["total"]), 4),
      "minimum_by_part_tflop": {k: _sig(v / 1e12) for k, v in minimum.items() if k != "total"},
      "counted_gb": _sig(counted.bytes_accessed / 1e9), "minimum_gb": _sig(bytes_min / 1e9),
      "bytes_ratio": round(ratio(counted.bytes_accessed, bytes_min), 3),
      "counted_gb_by_op": {k: _sig(v / 1e9) for k, v in counted.top_bytes(8).items()},
      "xla_module_tflop": _sig(float(xla.get("flops", 0.0)) / 1e12),
      "xla_module_gb": _sig(float(xla.get("bytes accessed", 0.0)) / 1e9),
      "compile_seconds": round(compile_s, 2), "device": str(jax.devices()[0]), "jax": jax.__version__,
      "flax": flax.__version__, "commit": git_commit()}


def _sig(x: float) -> float:
  return float(f"{x:.4g}")


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--configs", nargs="+", default=["bench", "1.3b"], choices=list(CONFIGS))
  ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
  ap.add_argument("--steps", type=int, default=4, choices=[1, 2, 3, 4])
  args = ap.parse_args()
  for config in args.configs:
    for name in args.policies:
      print(json.dumps(audit(config, name, args.steps)), flush=True)


if __name__ == "__main__":
  main()
