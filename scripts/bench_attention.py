"""Attention benchmark: the dense 21-frame window against Relax's 7-frame memory, per backend.

One JSON line per (case, backend): device, versions, commit, compile seconds apart from the steady-state median
of --iters timed calls, achieved TFLOP/s (4*B*N*H*T*S over the keys actually attended) and the bytes an ideal
kernel moves (queries, output, chunk keys/values, attended memory keys/values, and the RoPE tables it reads).

Cases (a chunk of 3 frames attends to; memory keys stored rotated, head-major, as the reservoir keeps them):
  dense21   18 memory frames (a full Self-Forcing window: every slot valid, read in order and as stored) + the
            chunk
  relax7    4 of 60 reservoir slots (sink 2, history 1, tail 1, read through the slot table, each turned by its
            hybrid-RoPE shift) + the chunk
  warmup    relax's first chunk: 4 entries, none valid yet (what skipping invalid entries saves)
Backends: reference (XLA), cudnn, pallas_gpu (the shift's rotation fused), pallas_gpu_rope_before (XLA gathers and
turns the memory, the kernel reads it contiguously), pallas_tpu; those the platform cannot run are skipped with a
note line. --check adds each backend's error against the dense oracle (`rf_jax.ops.oracle`).

  python scripts/bench_attention.py                      # GPU/TPU: the real 1.3B shapes (1560 tokens/frame, 12x128)
  python scripts/bench_attention.py --small              # CPU: reduced sizes, Pallas in interpret mode
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.ops import AttnImpl, SlotMemory, attention
from rf_jax.ops.backend import platform
from rf_jax.ops.oracle import dense_memory_attention, gather_memory
from rf_jax.runinfo import git_commit

BACKENDS = ("reference", "cudnn", "pallas_gpu", "pallas_gpu_rope_before", "pallas_tpu")


def make_case(name, *, frame_tokens, heads, head_dim, chunk_frames, dtype, seed=0):
  """(q, k, v, memory, attended key tokens per sample) for one case."""
  key = jax.random.split(jax.random.key(seed), 8)
  b, q_len, n, h = 1, frame_tokens, heads, head_dim
  t = chunk_frames * q_len
  rnd = lambda i, shape: jax.random.normal(key[i], shape, jnp.float32).astype(dtype)  # noqa: E731
  q, k, v = rnd(0, (b, t, n, h)), rnd(1, (b, t, n, h)), rnd(2, (b, t, n, h))
  if name == "dense21":
    r, slots, valid = 21 - chunk_frames, None, np.ones((b, 21 - chunk_frames), bool)
  else:
    r = 2 + 58  # the relax reservoir: sink 2 + the 58 frames a chunk can still read
    slots = jnp.asarray([[0, 1, 30, r - 1]], jnp.int32)
    valid = np.full((b, 4), name == "relax7")
  m = valid.shape[1]
  ang = jax.random.uniform(key[3], (b, m, q_len, h // 2), jnp.float32, 0, 6.3)
  cos, sin = (None, None) if name == "dense21" else (jnp.cos(ang), jnp.sin(ang))
  memory = SlotMemory(rnd(4, (b, n, r, q_len, h)), rnd(5, (b, n, r, q_len, h)), slots, jnp.asarray(valid), cos, sin)
  return q, k, v, memory, t + int(valid.sum()) * q_len


def rotate_memory(memory: SlotMemory, dtype) -> SlotMemory:
  """The memory's entries gathered and turned by XLA: M contiguous head-major slots with nothing left to do."""
  k, v = gather_memory(memory, dtype)  # [B, M*Q, N, H]
  b, m = memory.valid.shape
  shape = (b, m, memory.frame_tokens, *k.shape[2:])
  head_major = lambda a: jnp.moveaxis(a.reshape(shape), 3, 1)  # noqa: E731  [B, N, M, Q, H]
  return SlotMemory(head_major(k), head_major(v), None, memory.valid, None, None)


def runner(backend, mask=None):
  if backend == "pallas_gpu_rope_before":
    from rf_jax.ops.kernels import gpu_attention
    interp = platform() != "gpu"
    return lambda q, k, v, mem: gpu_attention.memory_attention(q, k, v, rotate_memory(mem, q.dtype), mask,
                                                                interpret=interp)
  return lambda q, k, v, mem: attention(q, k, v, memory=mem, mask=mask, impl=AttnImpl(backend))


def bench(fn, args, iters):
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return compile_s, float(np.median(times)), compiled


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--small", action="store_true", help="reduced sizes (the default on CPU)")
  p.add_argument("--cases", nargs="+", default=["dense21", "relax7", "warmup"])
  p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
  p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
  p.add_argument("--iters", type=int, default=20)
  p.add_argument("--check", action="store_true", help="also report each backend's max error against reference")
  args = p.parse_args()
  small = args.small or platform() == "cpu"
  sizes = (dict(frame_tokens=24, heads=2, head_dim=64, chunk_frames=3) if small
           else dict(frame_tokens=1560, heads=12, head_dim=128, chunk_frames=3))
  dtype = jnp.dtype(args.dtype)
  base = {"bench": "attention", "device": str(jax.devices()[0]), "platform": platform(), "jax": jax.__version__,
          "commit": git_commit(), "dtype": args.dtype, **sizes}
  for case in args.cases:
    q, k, v, mem, keys = make_case(case, dtype=dtype, **sizes)
    b, t, n, h = q.shape
    flops = 4 * b * n * h * t * keys
    attended = keys - t
    bytes_moved = (2 * q.nbytes + k.nbytes + v.nbytes + 2 * b * attended * n * h * dtype.itemsize)
    ref_out = None
    for backend in args.backends:
      row = {**base, "case": case, "backend": backend, "attended_key_tokens": keys}
      if backend.startswith("pallas_gpu") and platform() not in ("gpu", "cpu") or (
          backend == "pallas_tpu" and platform() not in ("tpu", "cpu")) or (
          backend == "cudnn" and (platform() != "gpu" or dtype == jnp.float32)):
        print(json.dumps({**row, "skipped": f"{backend} does not run on {platform()} / {args.dtype}"}), flush=True)
        continue
      try:
        compile_s, median, compiled = bench(runner(backend), (q, k, v, mem), args.iters)
      except Exception as e:  # noqa: BLE001  a backend failing is a result, not the end of the benchmark
        print(json.dumps({**row, "error": f"{type(e).__name__}: {str(e)[:300]}"}), flush=True)
        continue
      moved = bytes_moved + (2 * b * attended * (h // 2) * 4 if backend.startswith("pallas") else 0)
      row.update(compile_seconds=round(compile_s, 3), steady_median_ms=round(median * 1e3, 4),
                 tflops=round(flops / median / 1e12, 2), bytes_moved=moved,
                 achieved_gb_per_s=round(moved / median / 1e9, 1))
      if args.check:
        out = compiled(q, k, v, mem)
        if ref_out is None:
          ref_out = jax.jit(lambda q, k, v, mem: dense_memory_attention(q, k, v, mem, None))(q, k, v, mem)
        err = jnp.abs(out.astype(jnp.float32) - ref_out.astype(jnp.float32))
        row["rel_err_vs_oracle"] = float(err.max() / jnp.abs(ref_out.astype(jnp.float32)).max())
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
