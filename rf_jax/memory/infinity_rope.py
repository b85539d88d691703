"""Infinity-RoPE exactly as the official code behaves (yesiltepe-hidir/infinity-rope @63d7b84,
`CausalWanSelfAttention.forward` and `pipeline/causal_inference.py`): Block-Relativistic RoPE over a buffer of W
frame slots, with its scene events, KV Flush and RoPE Cut.

The buffer is upstream's own, in slot order, and every rule is its index arithmetic (sizes in frames; c the chunk's
first frame, F its frames, S the sink, L / G the local / global end):

  evict      a chunk's first call evicts iff c + F > G and F + L > W: e = F + L - W frames leave, slots
             S .. S+r-1 take slots S+e .. S+e+r-1 (r = L - e - S), L' = L + (c + F) - G - e; else L' = L + c + F - G.
  attend     slots 0 .. L'-1, the chunk in the last F; key slot i sits at temporal position i (the sink slot 0 is
             frame 0's key at 0), so before the buffer is full keys sit at their frame index.
  queries    at W - F .. W - 1 in an evicting call, else at c .. c+F-1 while c < W, then at W - F ..: in the later
             calls of the first evicting chunk (W not a multiple of F) and after a flush the queries are not where
             their own keys are, as upstream's.
  KV Flush   (a scene boundary, before its first call) slots 1, 2 <- slots W-2, W-1, L <- 3 (upstream's literals).
  RoPE Cut   (the block after a cut boundary) the last 3 queries and the last 3 attended keys sit at
             cut_frame .. cut_frame+2 (45 upstream) for that block's calls only.

The chunk is the model's own; the memory shows slots 0 .. L'-F-1. Keys are stored rotated at the frame they hold
(`stored_kv`) and turned by (slot position - frame) at use: the same as upstream's pre-RoPE keys rotated at their
slot index, to float32 rounding. A switch of prompt (`rf_jax.sampling.switching`) is a scene boundary: with
`Recache.FLUSH` (this policy's default) the flush runs, and a switch marked as a cut also cuts.

Letters: L layers, B batch, W buffer slots, Q tokens per frame, N heads, H head dim, F chunk frames.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.memory.base import CallView, Chunk, Policy, Recache
from rf_jax.memory.reservoir import Geometry, stored_kv
from rf_jax.model.dit import MemoryView

Array = jax.Array

CUT_FRAMES = 3  # upstream's `transition_frames`: how many of the last positions a RoPE cut moves
FLUSH_KEEP = 2  # upstream's flush copies the buffer's last two slots into slots 1, 2 ...
FLUSH_END = 3  # ... and sets the local end to 3 frames


class InfinityState(NamedTuple):
  k: Array  # [L, B, N, W, Q, H] the buffer in slot order, keys rotated at the frame each slot holds
  v: Array  # [L, B, N, W, Q, H]
  frame: Array  # int32 [W]: the frame each slot holds (-1: never written; a stale slot keeps its frame)
  local_end: Array  # int32: L, slots in use
  global_end: Array  # int32: G, one past the newest frame written
  scene_cut: Array  # bool: the next chunk is a cut block
  calls: Array  # int32: the calls made so far in this chunk


class InfinityCtx(NamedTuple):
  end: Array  # int32: L' (slots in use during the chunk, its own last)
  before: Array  # int32: L before the chunk's first call
  evict: Array  # bool: the first call evicted
  q_first: Array  # int32: the first call's query start
  q_rest: Array  # int32: the later calls' query start
  chunk: Chunk


@dataclasses.dataclass(frozen=True)
class InfinityRoPEPolicy(Policy):
  window_frames: int = 6  # W: the buffer, the chunk included (official 6)
  sink_frames: int = 1  # S: slots never evicted (official 1)
  rope_cut_frame: int = 45  # where a RoPE cut puts the cut block (upstream's `transition_from`)

  name = "infinity_rope"
  default_recache = Recache.FLUSH
  scene_events = True

  def validate(self, chunk_frames: int) -> None:
    if self.sink_frames < 1:
      raise ValueError(f"infinity_rope: sink_frames={self.sink_frames} must be >= 1 (with no sink, upstream "
                       "attends slot 0's key without any RoPE)")
    if self.window_frames < self.sink_frames + chunk_frames or self.window_frames < FLUSH_END:
      raise ValueError(f"infinity_rope: window_frames={self.window_frames} must be at least sink_frames + chunk "
                       f"frames = {self.sink_frames + chunk_frames} (and {FLUSH_END}, the frames a flush keeps)")
    if self.rope_cut_frame < 0:
      raise ValueError(f"infinity_rope: rope_cut_frame={self.rope_cut_frame} must be >= 0")

  def init(self, geom: Geometry) -> InfinityState:
    w = self.window_frames
    shape = (geom.num_layers, geom.batch, geom.num_heads, w, geom.frame_tokens, geom.head_dim)
    zero = jnp.zeros((), jnp.int32)
    return InfinityState(jnp.zeros(shape, geom.dtype), jnp.zeros(shape, geom.dtype), jnp.full((w,), -1, jnp.int32),
                         zero, zero, jnp.zeros((), bool), zero)

  # ------------------------------------------------------------------------------------------------ per chunk

  def begin_chunk(self, params, st: InfinityState, chunk: Chunk):
    w, s, f, c = self.window_frames, self.sink_frames, chunk.frames, chunk.start
    g, end = st.global_end, st.local_end
    evict = (c + f > g) & (f + end > w)
    e = jnp.where(evict, f + end - w, 0)
    r = end - e - s
    slot = jnp.arange(w, dtype=jnp.int32)
    src = jnp.where(evict & (slot >= s) & (slot < s + r), slot + e, slot)  # the roll: slots S.. take S+e..
    k, v = jnp.take(st.k, src, axis=3), jnp.take(st.v, src, axis=3)
    new_end = end + (c + f) - g - e
    q_rest = jnp.where(c < w, c, w - f)
    ctx = InfinityCtx(new_end, end, evict, jnp.where(evict, w - f, q_rest), q_rest, chunk)
    st = st._replace(k=k, v=v, frame=st.frame[src], local_end=new_end, global_end=c + f, calls=jnp.zeros_like(st.calls))
    return st, ctx

  def _positions(self, st: InfinityState, ctx: InfinityCtx, chunk: Chunk):
    """(slot positions [W], chunk key positions [F], query positions [F]) of the current call."""
    w, f = self.window_frames, chunk.frames
    m = ctx.end
    cut = st.scene_cut
    slot = jnp.arange(w, dtype=jnp.int32)
    own = m - f + jnp.arange(f, dtype=jnp.int32)  # the chunk's slots
    q = jnp.where(st.calls == 0, ctx.q_first, ctx.q_rest) + jnp.arange(f, dtype=jnp.int32)
    i = jnp.arange(f, dtype=jnp.int32)
    cut_pos = self.rope_cut_frame + i - (f - CUT_FRAMES)
    moved_k = cut & (own >= m - CUT_FRAMES)
    moved_q = cut & (i >= f - CUT_FRAMES)
    return slot, jnp.where(moved_k, self.rope_cut_frame + own - (m - CUT_FRAMES), own), jnp.where(moved_q, cut_pos, q)

  def call_view(self, params, st: InfinityState, ctx: InfinityCtx, chunk: Chunk) -> CallView:
    b = st.k.shape[1]
    slot, chunk_pos, query_pos = self._positions(st, ctx, chunk)
    valid = slot < ctx.end - chunk.frames
    shift = jnp.where(valid & (st.frame >= 0), slot - st.frame, 0)  # stored at its frame, shown at its slot
    view = MemoryView(st.k, st.v, jnp.broadcast_to(shift, (b, slot.shape[0])), jnp.broadcast_to(valid, (b, slot.shape[0])))
    return CallView(view, chunk_pos, query_pos=query_pos)

  def after_call(self, params, st: InfinityState, ctx: InfinityCtx, aux):
    """Per call: where its queries and attended keys sat, and the branch it took."""
    f = ctx.chunk.frames
    slot, chunk_pos, query_pos = self._positions(st, ctx, ctx.chunk)
    first = st.calls == 0
    in_use = slot < ctx.end
    keys = jnp.where(in_use, jnp.where(slot >= ctx.end - f, jnp.take(chunk_pos, jnp.clip(slot - (ctx.end - f), 0, f - 1)),
                                       slot), -1)
    frames = jnp.where(in_use, jnp.where(slot >= ctx.end - f, ctx.chunk.start + slot - (ctx.end - f), st.frame), -1)
    trace = {"query_positions": query_pos, "key_positions": keys, "key_frames": frames, "evicted": first & ctx.evict,
             "local_end_before": jnp.where(first, ctx.before, ctx.end), "local_end": ctx.end,
             "global_end": st.global_end, "scene_cut": st.scene_cut}
    return st._replace(calls=st.calls + 1), trace

  def end_chunk(self, params, st: InfinityState, ctx: InfinityCtx, kv, chunk: Chunk):
    f = chunk.frames
    at = ctx.end - f
    stored = stored_kv(kv, chunk.positions, chunk.grid)  # [L, B, N, F, Q, H] at the frames' indices
    k = jax.lax.dynamic_update_slice_in_dim(st.k, stored.k.astype(st.k.dtype), at, axis=3)
    v = jax.lax.dynamic_update_slice_in_dim(st.v, stored.v.astype(st.v.dtype), at, axis=3)
    frame = jax.lax.dynamic_update_slice_in_dim(st.frame, chunk.positions, at, axis=0)
    trace = {"slot_frames": frame, "local_end": ctx.end, "local_end_before": ctx.before, "evicted": ctx.evict,
             "scene_cut": st.scene_cut, "q_start_first": ctx.q_first, "q_start_rest": ctx.q_rest}
    return st._replace(k=k, v=v, frame=frame, scene_cut=jnp.zeros_like(st.scene_cut)), trace

  # ------------------------------------------------------------------------------------------------ scene events

  def scene_event(self, params, st: InfinityState, flush: Array, cut: Array) -> InfinityState:
    """A scene boundary before the next chunk: with `flush`, KV Flush (slots 1, 2 <- the buffer's last two slots,
    the local end <- 3 frames); `cut`: the next chunk is a RoPE-cut block. Both traced."""
    w = self.window_frames
    slot = jnp.arange(w, dtype=jnp.int32)
    src = jnp.where(flush & (slot >= 1) & (slot < 1 + FLUSH_KEEP), slot + (w - FLUSH_KEEP - 1), slot)
    return st._replace(k=jnp.take(st.k, src, axis=3), v=jnp.take(st.v, src, axis=3), frame=st.frame[src],
                       local_end=jnp.where(flush, FLUSH_END, st.local_end), scene_cut=jnp.asarray(cut, bool))

  def recache_width(self, geom: Geometry, recache: Recache) -> int:
    if recache is not Recache.FLUSH:
      raise ValueError(f"infinity_rope: recache={recache.value} is not this policy's; a prompt switch is a scene "
                       "boundary: recache=flush (its KV Flush) or none")
    return 0

  def describe(self, chunk, trace, calls):
    t = {k: np.asarray(v) for k, v in trace.items()}
    end = int(t["local_end"])
    frames = t["slot_frames"]
    return {"slot_frames": frames[:end].tolist(), "evicted": bool(t["evicted"]), "scene_cut": bool(t["scene_cut"]),
            "query_start": [int(t["q_start_first"]), int(t["q_start_rest"])]}
