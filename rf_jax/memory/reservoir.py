"""The frame reservoir: a fixed-capacity store of keys and values, one frame per slot.

Slots [0, sink) hold the first `sink` frames of the video for ever; the other slots form a ring in which frame f
(f >= sink) lives in slot sink + (f - sink) mod (capacity - sink). Writing a frame therefore evicts the frame
`capacity - sink` frames older than it and never moves anything: no copies, no shapes that depend on time.

Keys are stored the way attention reads them: head-major ([.., N, R, Q, H]: one head's frame is one contiguous
block) and already rotated by RoPE at the frame's own index, so a policy that shows frames where they happened
reads them as they are, and one that moves a frame turns only that frame by the difference (`MemoryView.shift`).
Each slot also records the frame it holds (-1 when empty) and the layer-0 pre-RoPE key mean the Relax score needs.

Letters: L layers, B batch, R slots, F frames written at once, Q tokens per frame, N heads, H head dim.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rf_jax.model.attention import FrameKV
from rf_jax.model.rope import rope_cos_sin
from rf_jax.ops.rope import apply_rope

Array = jax.Array


class Geometry(NamedTuple):
  """Static sizes a memory is allocated for."""
  num_layers: int
  batch: int
  frame_tokens: int  # Q
  num_heads: int
  head_dim: int
  chunk_frames: int  # F
  total_frames: int  # frames of the whole rollout (only a global window needs it)
  dtype: jnp.dtype = jnp.float32


class Reservoir(NamedTuple):
  k: Array  # [L, B, N, R, Q, H] keys rotated at the frame's index
  v: Array  # [L, B, N, R, Q, H]
  frame: Array  # int32 [B, R]: global frame index held by each slot, -1 when empty
  key_mean: Array  # float32 [B, R, H]: layer-0 pre-RoPE keys averaged over the frame's tokens, then over heads

  @property
  def capacity(self) -> int:
    return self.frame.shape[-1]


def init_reservoir(geom: Geometry, capacity: int) -> Reservoir:
  shape = (geom.num_layers, geom.batch, geom.num_heads, capacity, geom.frame_tokens, geom.head_dim)
  return Reservoir(jnp.zeros(shape, geom.dtype), jnp.zeros(shape, geom.dtype),
                   jnp.full((geom.batch, capacity), -1, jnp.int32),
                   jnp.zeros((geom.batch, capacity, geom.head_dim), jnp.float32))


def stored_kv(kv: FrameKV, frames: Array, grid: tuple[int, int]) -> FrameKV:
  """The chunk's pre-RoPE keys/values [L, B, F, Q, N, H] as the reservoir keeps them: keys turned at frame
  indices `frames` (int [F]) on the `grid` (Hp, Wp) of token positions, both head-major [L, B, N, F, Q, H]."""
  if grid[0] * grid[1] != kv.k.shape[3]:
    raise ValueError(f"token grid {grid} does not hold the keys' {kv.k.shape[3]} tokens per frame")
  cos, sin = rope_cos_sin(frames, grid, kv.k.shape[-1])  # [F, Q, H/2]
  k = apply_rope(kv.k, cos, sin)
  return FrameKV(jnp.moveaxis(k, -2, 2), jnp.moveaxis(kv.v, -2, 2))


def ring_slot(frame: Array, sink: int, ring_end: int) -> Array:
  """Slot of global frame `frame` (int array) in a ring over slots [sink, ring_end); `ring_end` (one past the
  ring) for frames that have no slot (a ring of size 0)."""
  frame = jnp.asarray(frame, jnp.int32)
  ring = ring_end - sink
  if ring <= 0:
    return jnp.where(frame < sink, frame, ring_end)
  return jnp.where(frame < sink, frame, sink + (frame - sink) % ring)


def frame_key_mean(k: Array) -> Array:
  """Relax Forcing's un-normalised prototype: k [B, F, Q, N, H] -> mean over tokens, then heads: [B, F, H] f32."""
  return k.astype(jnp.float32).mean(axis=2).mean(axis=2)


def write_frames(res: Reservoir, kv: FrameKV, first_frame: Array, sink: int, grid: tuple[int, int],
                 ring_end: int | None = None) -> Reservoir:
  """Stores F consecutive frames first_frame .. first_frame+F-1 (kv: pre-RoPE [L, B, F, Q, N, H]) in their ring
  slots, keys turned at their frame index on the token `grid` (Hp, Wp).

  The ring spans slots [sink, ring_end) (default: to the end); slots past it are left alone.
  """
  f = kv.k.shape[2]
  ring_end = res.capacity if ring_end is None else ring_end
  frames = jnp.asarray(first_frame, jnp.int32) + jnp.arange(f, dtype=jnp.int32)
  slots = ring_slot(frames, sink, ring_end)  # [F]
  # A chunk longer than the ring keeps only its newest frames (no two writes may target one slot).
  survives = (frames < sink) | (frames > frames[-1] - (ring_end - sink))
  slots = jnp.where(survives & (slots < ring_end), slots, res.capacity)  # capacity = dropped
  stored = stored_kv(kv, frames, grid)  # [L, B, N, F, Q, H]
  k = res.k.at[:, :, :, slots].set(stored.k.astype(res.k.dtype), mode="drop")
  v = res.v.at[:, :, :, slots].set(stored.v.astype(res.v.dtype), mode="drop")
  frame = res.frame.at[:, slots].set(jnp.broadcast_to(frames, (res.frame.shape[0], f)), mode="drop")
  key_mean = res.key_mean.at[:, slots].set(frame_key_mean(kv.k[0]), mode="drop")
  return Reservoir(k, v, frame, key_mean)


def gather_slots(res: Reservoir, slots: Array) -> tuple[Array, Array]:
  """Keys/values of per-sample slots: slots int [B, M] -> k, v [L, B, N, M, Q, H]."""
  idx = slots.astype(jnp.int32)[None, :, None, :, None, None]  # [1, B, 1, M, 1, 1]
  return jnp.take_along_axis(res.k, idx, axis=3), jnp.take_along_axis(res.v, idx, axis=3)


def write_at(res: Reservoir, kv: FrameKV, frames: Array, slots: Array, grid: tuple[int, int]) -> Reservoir:
  """Stores frames `frames` (int [W]; kv pre-RoPE [L, B, W, Q, N, H]) in slots `slots` (int [W]; the capacity
  drops a frame), keys turned at their frame index on the token `grid`."""
  stored = stored_kv(kv, jnp.maximum(frames, 0), grid)  # [L, B, N, W, Q, H]
  k = res.k.at[:, :, :, slots].set(stored.k.astype(res.k.dtype), mode="drop")
  v = res.v.at[:, :, :, slots].set(stored.v.astype(res.v.dtype), mode="drop")
  frame = res.frame.at[:, slots].set(jnp.broadcast_to(frames, (res.frame.shape[0], frames.shape[0])), mode="drop")
  key_mean = res.key_mean.at[:, slots].set(frame_key_mean(kv.k[0]), mode="drop")
  return Reservoir(k, v, frame, key_mean)
