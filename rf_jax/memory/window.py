"""Self-Forcing's KV cache as a policy: a window of recent frames with an optional attention sink.

Upstream (guandeh17/Self-Forcing @33593df, `CausalWanSelfAttention._forward_inference`) keeps a cache of
`local_attn_size` frames that includes the chunk being generated; once it is full, each new chunk evicts the oldest
frames after the first `sink_size`, which stay for ever. Every frame attends to the whole cache at absolute
positions. Here the chunk is the model's own and the memory holds the rest: a reservoir of `window_frames - F`
slots (sink + ring), each frame written once with the keys of its clean refill call.

Position schemes (`positions`):
  absolute         the frame index (Self-Forcing, LongLive 1.0).
  relocated_sink   the sink is placed right before the oldest non-sink frame of the window, so that every
                   offset stays inside the window (Rolling Forcing, the attention-sink baseline).
  end_aligned      the sink keeps positions 0..S-1 and the rest of the window is numbered so that the chunk ends
                   at window_frames - 1 in every chunk. It resembles Infinity-RoPE's Block-Relativistic RoPE once
                   the buffer is full, but not before, and has no flush or cut: Infinity-RoPE itself is the policy
                   `infinity_rope` (a memory block {"policy": "window", "positions": "window_relative"} means it).
Once the window is full, the two relative schemes coincide. In every scheme the frames after the sink keep their
offsets to the chunk, so they are read as stored; only the sink is turned (`MemoryView.shift`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.memory.base import CallView, Chunk, Policy, Recache, RecachePlan, moved_by
from rf_jax.memory.reservoir import Geometry, Reservoir, init_reservoir, ring_slot, write_at, write_frames
from rf_jax.model.dit import MemoryView

Array = jax.Array

POSITIONS = ("absolute", "relocated_sink", "end_aligned")


@dataclasses.dataclass(frozen=True)
class WindowPolicy(Policy):
  window_frames: int = -1  # frames attended by a call, its own chunk included; -1 = the whole video
  sink_frames: int = 0
  positions: Literal["absolute", "relocated_sink", "end_aligned"] = "absolute"

  name = "window"

  def validate(self, chunk_frames: int) -> None:
    if self.positions == "window_relative":
      raise ValueError("window: positions='window_relative' is Infinity-RoPE: use the policy infinity_rope "
                       "(InfinityRoPEPolicy), or positions='end_aligned' for the chunk-at-the-end numbering")
    if self.positions not in POSITIONS:
      raise ValueError(f"window: positions={self.positions!r}; expected one of {', '.join(POSITIONS)}")
    if self.sink_frames < 0:
      raise ValueError(f"window: sink_frames={self.sink_frames} must be >= 0")
    if self.window_frames != -1 and self.window_frames < self.sink_frames + chunk_frames:
      raise ValueError(f"window: window_frames={self.window_frames} must be -1 (global) or at least "
                       f"sink_frames + chunk frames = {self.sink_frames + chunk_frames}")

  def capacity(self, geom: Geometry) -> int:
    if self.window_frames == -1:
      return max(geom.total_frames - geom.chunk_frames, 1)
    return max(self.window_frames - geom.chunk_frames, 1)

  def init(self, geom: Geometry) -> Reservoir:
    return init_reservoir(geom, self.capacity(geom))

  def positions_of(self, res: Reservoir, chunk: Chunk) -> tuple[Array, Array]:
    """Where the scheme shows each slot (int32 [B, R], -1 when empty) and the chunk ([F])."""
    c, s = chunk.start, self.sink_frames
    valid = res.frame >= 0  # [B, R]
    is_sink = res.frame < s
    chunk_pos = chunk.positions
    pos = res.frame
    if self.positions == "relocated_sink":
      oldest = jnp.min(jnp.where(valid & ~is_sink, res.frame, c), axis=1, keepdims=True)  # [B, 1]
      pos = jnp.where(is_sink, oldest - s + res.frame, res.frame)
    elif self.positions == "end_aligned":
      shift = res.capacity - c  # the chunk starts at window - F = capacity
      pos = jnp.where(is_sink, res.frame, res.frame + shift)
      chunk_pos = chunk_pos + shift
    return jnp.where(valid, pos, -1), chunk_pos

  def call_view(self, params, res: Reservoir, ctx, chunk: Chunk) -> CallView:
    valid = res.frame >= 0  # [B, R]
    shift = None  # absolute: every frame where it happened
    if self.positions != "absolute" and self.sink_frames:
      pos, chunk_pos = self.positions_of(res, chunk)
      shift = moved_by(pos, res.frame, valid, chunk_pos, chunk)  # non-zero on the sink only
    return CallView(MemoryView(res.k, res.v, shift, valid), chunk.positions)

  def end_chunk(self, params, res: Reservoir, ctx, kv, chunk: Chunk):
    pos, chunk_pos = self.positions_of(res, chunk)
    trace = {"memory_frames": res.frame, "memory_positions": pos, "chunk_positions": chunk_pos}
    return write_frames(res, kv, chunk.start, self.sink_frames, chunk.grid), trace

  # ------------------------------------------------------------------------------- prompt switches (LongLive)

  default_recache = Recache.WINDOW

  def recache_width(self, geom: Geometry, recache: Recache) -> int:
    """WINDOW and ALL_MEMORY are the same here: the window is all the memory holds."""
    if recache not in (Recache.WINDOW, Recache.ALL_MEMORY):
      raise ValueError(f"window: recache={recache.value!r}; a window re-caches its window (window = all_memory) "
                       "or none")
    return geom.total_frames if self.window_frames == -1 else self.window_frames

  def _scheme_positions(self, frames: Array, c: Array, capacity: int) -> Array:
    """Where the chunk at `c` is shown the frames `frames` under this scheme (`positions_of` for frames not yet
    in a view): the re-run call of a switch places them there, so their keys see each other as the next chunk will
    see them (absolute: at their frames, LongLive's)."""
    s = self.sink_frames
    is_sink = frames < s
    if self.positions == "end_aligned":
      return jnp.where(is_sink, frames, frames + capacity - c)
    if self.positions == "relocated_sink":
      oldest = jnp.maximum(s, c - (capacity - s)) if self.window_frames != -1 else jnp.full_like(c, s)
      return jnp.where(is_sink, oldest - s + frames, frames)
    return frames

  def _recache_start(self, c: Array) -> Array:
    """st: the first re-run frame, c - min(window, c) (0 for a global window)."""
    return jnp.zeros_like(c) if self.window_frames == -1 else c - jnp.minimum(self.window_frames, c)

  def recache_plan(self, params, res: Reservoir, chunk: Chunk, frames: Array, keep_sink: bool):
    """LongLive: frames st .. c-1 re-run in one call with no mask among them. With the global sink kept (and the
    window past it, st > 0) the sink slots keep their keys and are attended; the first `sink` re-run frames are
    then neither stored nor attended (LongLive computes and drops them)."""
    c, s = chunk.start, self.sink_frames
    st = self._recache_start(c)
    rerun = (frames >= st) & (frames >= 0)
    keep = keep_sink & (st > 0)
    keys = rerun & ~(keep & (frames < st + s))
    kept = (jnp.arange(res.capacity) < s)[None] & (res.frame >= 0) & keep  # [B, R]
    if self.positions == "absolute":
      return res, RecachePlan(frames, rerun, keys, MemoryView(res.k, res.v, None, kept))
    # A relative scheme shows the frames elsewhere: the re-run call places them as the switch chunk will see them,
    # and the kept sink (stored at its frames) is turned to its place in that view.
    pos = self._scheme_positions(jnp.maximum(frames, 0), c, res.capacity)
    sink_pos = self._scheme_positions(res.frame, c, res.capacity)
    shift = jnp.where(kept, sink_pos - res.frame, 0).astype(jnp.int32)
    return res, RecachePlan(frames, rerun, keys, MemoryView(res.k, res.v, shift, kept), pos)

  def recache_store(self, params, res: Reservoir, plan: RecachePlan, kv, chunk: Chunk, keep_sink: bool):
    """The kept sink stays; the first `sink` stored frames take the sink slots (so without a global sink the sink
    becomes frames st .. st+S-1 for good, as LongLive's); the newest frames the ring holds take their ring slots;
    every other slot is emptied."""
    c, s, r = chunk.start, self.sink_frames, res.capacity
    st = self._recache_start(c)
    keep = keep_sink & (st > 0)
    to_sink = plan.keys & ~keep & (plan.frames < st + s)
    to_ring = plan.keys & ~to_sink & (plan.frames >= c - (r - s)) & (plan.frames >= s)
    slots = jnp.where(to_sink, plan.frames - st, jnp.where(to_ring, ring_slot(jnp.maximum(plan.frames, 0), s, r), r))
    held = (jnp.arange(r) < s)[None] & keep
    res = res._replace(frame=jnp.where(held, res.frame, -1))
    return write_at(res, kv, plan.frames, slots, chunk.grid)

  def describe(self, chunk, trace, calls):
    return describe_slots(trace)


def describe_slots(trace) -> dict:
  """The frames a chunk attended besides its own (batch element 0), oldest first, with their RoPE positions."""
  frames, pos = np.asarray(trace["memory_frames"])[0], np.asarray(trace["memory_positions"])[0]
  order = [i for i in np.argsort(frames, kind="stable") if frames[i] >= 0]
  return {"memory_frames": [int(frames[i]) for i in order], "memory_positions": [int(pos[i]) for i in order],
          "chunk_positions": np.asarray(trace["chunk_positions"]).tolist()}
