"""The frame reservoir: a fixed-capacity store of pre-RoPE keys and values, one frame per slot.

Slots [0, sink) hold the first `sink` frames of the video for ever; the other slots form a ring in which frame f
(f >= sink) lives in slot sink + (f - sink) mod (capacity - sink). Writing a frame therefore evicts the frame
`capacity - sink` frames older than it and never moves anything: no copies, no shapes that depend on time.
Each slot records the frame it holds (-1 when empty) and the layer-0 key mean the Relax score needs.

Letters: L layers, B batch, R slots, F frames written at once, Q tokens per frame, N heads, H head dim.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rf_jax.model.attention import FrameKV

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
  k: Array  # [L, B, R, Q, N, H] pre-RoPE keys
  v: Array  # [L, B, R, Q, N, H]
  frame: Array  # int32 [B, R]: global frame index held by each slot, -1 when empty
  key_mean: Array  # float32 [B, R, H]: layer-0 keys averaged over the frame's tokens, then over heads

  @property
  def capacity(self) -> int:
    return self.frame.shape[-1]


def init_reservoir(geom: Geometry, capacity: int) -> Reservoir:
  shape = (geom.num_layers, geom.batch, capacity, geom.frame_tokens, geom.num_heads, geom.head_dim)
  return Reservoir(jnp.zeros(shape, geom.dtype), jnp.zeros(shape, geom.dtype),
                   jnp.full((geom.batch, capacity), -1, jnp.int32),
                   jnp.zeros((geom.batch, capacity, geom.head_dim), jnp.float32))


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


def write_frames(res: Reservoir, kv: FrameKV, first_frame: Array, sink: int, ring_end: int | None = None
                 ) -> Reservoir:
  """Stores F consecutive frames first_frame .. first_frame+F-1 (kv: [L, B, F, Q, N, H]) in their ring slots.

  The ring spans slots [sink, ring_end) (default: to the end); slots past it are left alone.
  """
  f = kv.k.shape[2]
  ring_end = res.capacity if ring_end is None else ring_end
  frames = jnp.asarray(first_frame, jnp.int32) + jnp.arange(f, dtype=jnp.int32)
  slots = ring_slot(frames, sink, ring_end)  # [F]
  # A chunk longer than the ring keeps only its newest frames (no two writes may target one slot).
  survives = (frames < sink) | (frames > frames[-1] - (ring_end - sink))
  slots = jnp.where(survives & (slots < ring_end), slots, res.capacity)  # capacity = dropped
  k = res.k.at[:, :, slots].set(kv.k.astype(res.k.dtype), mode="drop")
  v = res.v.at[:, :, slots].set(kv.v.astype(res.v.dtype), mode="drop")
  frame = res.frame.at[:, slots].set(jnp.broadcast_to(frames, (res.frame.shape[0], f)), mode="drop")
  key_mean = res.key_mean.at[:, slots].set(frame_key_mean(kv.k[0]), mode="drop")
  return Reservoir(k, v, frame, key_mean)


def gather_slots(res: Reservoir, slots: Array) -> tuple[Array, Array]:
  """Keys/values of per-sample slots: slots int [B, M] -> k, v [L, B, M, Q, N, H]."""
  take = jax.vmap(lambda a, idx: a[idx], in_axes=(0, 0))  # over batch: [B, R, ...], [B, M] -> [B, M, ...]
  take_l = jax.vmap(take, in_axes=(0, None))  # over layers
  return take_l(res.k, slots), take_l(res.v, slots)
