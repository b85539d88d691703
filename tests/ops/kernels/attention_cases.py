"""Random attention problems shared by the kernel tests: never zeros, partially empty memories, odd sizes."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from rf_jax.ops import SlotMemory
from rf_jax.ops.oracle import dense_memory_attention

TOLERANCE = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}


def make_problem(*, batch=2, frames=2, frame_tokens=12, heads=2, head_dim=64, reservoir=5, entries=3,
                 valid=None, dtype=jnp.float32, seed=0, rotated=False):
  rng = np.random.default_rng(seed)
  t = frames * frame_tokens
  f = lambda *s: jnp.asarray(rng.standard_normal(s) * 1.5 + 0.3, jnp.float32).astype(dtype)  # noqa: E731
  q, k, v = f(batch, t, heads, head_dim), f(batch, t, heads, head_dim), f(batch, t, heads, head_dim)
  if entries == 0:
    return q, k, v, None
  slots = np.stack([rng.permutation(reservoir)[:entries] for _ in range(batch)]).astype(np.int32)
  if valid is None:
    valid = rng.random((batch, entries)) < 0.7
    valid[0, 0], valid[-1, -1] = True, False  # at least one entry used and one skipped
  ang = rng.uniform(0, 2 * np.pi, (batch, entries, frame_tokens, head_dim // 2))
  cos, sin = (None, None) if rotated else (jnp.asarray(np.cos(ang), jnp.float32), jnp.asarray(np.sin(ang), jnp.float32))
  memory = SlotMemory(f(batch, heads, reservoir, frame_tokens, head_dim), f(batch, heads, reservoir, frame_tokens, head_dim),
                      jnp.asarray(slots), jnp.asarray(valid), cos, sin)
  return q, k, v, memory


def rel_err(out, q, k, v, memory, mask):
  ref = dense_memory_attention(q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32),
                               _f32(memory), mask)
  out = jnp.asarray(out, jnp.float32)
  assert out.shape == ref.shape and bool(jnp.all(jnp.isfinite(out)))
  return float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))


def _f32(memory):
  if memory is None:
    return None
  return memory._replace(k=memory.k.astype(jnp.float32), v=memory.v.astype(jnp.float32))
