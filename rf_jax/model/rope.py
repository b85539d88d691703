"""3-D rotary position embedding of Wan2.1 (frame, height, width), as Self-Forcing's `causal_rope_apply`.

The head dim's c = H/2 complex pairs are split [c - 2*(c//3), c//3, c//3] between frame, height and width; pair j
of an axis whose table has width dim_k turns by p * 10000^(-2j/dim_k) (each axis uses its own dim_k). Pairs are
interleaved: elements (2j, 2j+1) form one complex number.

The reference multiplies in complex128 with a 1024-row table and cannot go past latent frame 1023. Here the tables
are built in float64 on the host and applied in float32. Frame positions are looked up in three levels,
p = 1024^2*hi + 1024*mid + lo, joined by the angle-addition formula, so any position in (-MAX_POSITION,
MAX_POSITION) is exact to float32 rounding (negative ones turn the other way: memory shifts can be negative) and
positions below 1024 read the table directly. Height and width positions are static.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.ops.rope import apply_rope  # noqa: F401  (re-exported: the model's RoPE)

Array = jax.Array

TABLE_SIZE = 1024  # rows of the reference table, and of our low-level table
LEVELS = 3
MAX_POSITION = TABLE_SIZE ** LEVELS  # exclusive bound on |frame position|: 2^30 latent frames


def rope_pairs(head_dim: int) -> tuple[int, int, int]:
  c = head_dim // 2
  return (c - 2 * (c // 3), c // 3, c // 3)


def _axis_inv_freq(pairs: int) -> np.ndarray:
  dim_k = 2 * pairs
  return np.power(10000.0, -np.arange(0, dim_k, 2, dtype=np.float64)[:pairs] / dim_k)


def rope_angles_table(head_dim: int, positions: int = TABLE_SIZE) -> np.ndarray:
  """The reference's concatenated angle table, float64 [positions, head_dim/2] (its `freqs` = exp(i * angles))."""
  p = np.arange(positions, dtype=np.float64)[:, None]
  return np.concatenate([p * _axis_inv_freq(n) for n in rope_pairs(head_dim)], axis=1)


@functools.lru_cache(maxsize=32)
def _frame_tables(head_dim: int) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
  """Per level k: cos/sin float32 [1024, c_t] of the angles of positions i * 1024^k."""
  inv = _axis_inv_freq(rope_pairs(head_dim)[0])
  out = []
  for level in range(LEVELS):
    ang = np.outer(np.arange(TABLE_SIZE, dtype=np.float64) * float(TABLE_SIZE ** level), inv)
    out.append((np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)))
  return tuple(out)


@functools.lru_cache(maxsize=32)
def _spatial_table(head_dim: int, grid_h: int, grid_w: int) -> tuple[np.ndarray, np.ndarray]:
  _, ph, pw = rope_pairs(head_dim)
  hh, ww = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")
  ang = np.concatenate([hh.reshape(-1, 1) * _axis_inv_freq(ph), ww.reshape(-1, 1) * _axis_inv_freq(pw)], axis=1)
  return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)  # [Q, ph + pw]


def frame_cos_sin(frame_pos: Array, head_dim: int) -> tuple[Array, Array]:
  """cos/sin of the frame-axis angles; frame_pos: int [...] (may be negative) -> float32 [..., c_t]."""
  tables = _frame_tables(head_dim)
  p = jnp.asarray(frame_pos).astype(jnp.int32)
  a = jnp.clip(jnp.abs(p), 0, MAX_POSITION - 1)
  cos, sin = (jnp.asarray(t)[a % TABLE_SIZE] for t in tables[0])
  for level in range(1, LEVELS):
    i = (a // TABLE_SIZE ** level) % TABLE_SIZE
    ch, sh = jnp.asarray(tables[level][0])[i], jnp.asarray(tables[level][1])[i]
    cos, sin = ch * cos - sh * sin, sh * cos + ch * sin
  return cos, jnp.where((p < 0)[..., None], -sin, sin)


def rope_cos_sin(frame_pos: Array, grid_hw: tuple[int, int], head_dim: int) -> tuple[Array, Array]:
  """cos/sin for every token of frames at `frame_pos`: int [...] -> float32 [..., Q, c] with Q = Hp*Wp."""
  ct, st = frame_cos_sin(frame_pos, head_dim)  # [..., c_t]
  cs, ss = _spatial_table(head_dim, *grid_hw)  # [Q, c_h + c_w]
  q = cs.shape[0]
  lead = ct.shape[:-1]
  ct = jnp.broadcast_to(ct[..., None, :], (*lead, q, ct.shape[-1]))
  st = jnp.broadcast_to(st[..., None, :], (*lead, q, st.shape[-1]))
  cs = jnp.broadcast_to(jnp.asarray(cs), (*lead, *cs.shape))
  ss = jnp.broadcast_to(jnp.asarray(ss), (*lead, *ss.shape))
  return jnp.concatenate([ct, cs], axis=-1), jnp.concatenate([st, ss], axis=-1)


def shift_cos_sin(shift: Array, head_dim: int) -> tuple[Array, Array]:
  """cos/sin that move keys by `shift` frame positions (int [...], may be negative) and leave height and width
  alone: float32 [..., H/2] (the frame pairs turn, the spatial pairs get cos 1, sin 0)."""
  ct, st = frame_cos_sin(shift, head_dim)  # [..., c_t]
  spatial = head_dim // 2 - ct.shape[-1]
  ones = jnp.ones((*ct.shape[:-1], spatial), jnp.float32)
  return jnp.concatenate([ct, ones], axis=-1), jnp.concatenate([st, 0 * ones], axis=-1)
