"""Context Forcing's Slow-Fast memory exactly as the official code behaves (TIGER-AI-Lab/Context-Forcing @f44bac6,
`wan/modules/causal_model.py`); the settings and their meaning are `SlowFastPolicy`'s (slow_fast.py).

Every layer decides on its own, on every call of the chunk (4 denoising steps, then the refill) until one promotes,
comparing with the previous call's representation; the promoted keys are that call's (noisy) keys; while the cache
fills, chunks are written in slot order (so frames sit in the slow slots until promotions overwrite them) and keys
are positioned by slot. The decision runs inside each layer, so the policy hands the model a `LayerHook`: per layer,
`UpstreamLayer` goes in and `UpstreamLayerOut` comes back.

The cache is upstream's own, in slot order, head-major, of keys rotated at frame position 0 (the height/width part
of RoPE only); every entry is turned from 0 to its slot's position.

Letters: L layers, B batch, K slow slots, R cache slots, Q tokens per frame, N heads, H head dim, F chunk frames.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.memory.base import CallView, Chunk, Recache, RecachePlan
from rf_jax.memory.reservoir import Geometry, stored_kv
from rf_jax.memory.slow_fast import SlowFastSettings, cosine, representation
from rf_jax.model.attention import FrameKV
from rf_jax.model.dit import LayerHook, MemoryView

Array = jax.Array


class UpstreamState(NamedTuple):
  k: Array  # [L, B, N, R, Q, H] upstream's cache in slot order (keys rotated at frame 0), R = S + K + fast
  v: Array
  table: Array  # int32 [L, R]: frame held by each slot (-1 empty), per layer
  count: Array  # int32 [L]: promoted frames held (0..K)
  rep: Array  # float32 [L, B, N*H]: the previous call's representation
  has_rep: Array  # bool [L]
  local_end: Array  # int32: frames in use after the last chunk


class UpstreamLayer(NamedTuple):
  """One layer's part of the state, what the hook reads inside the layer."""
  k: Array  # [B, N, R, Q, H]
  v: Array
  table: Array  # int32 [R]
  count: Array  # int32
  rep: Array  # float32 [B, N*H]
  has_rep: Array  # bool


class UpstreamLayerOut(NamedTuple):
  """What one layer's hook decided on one call (stacked over layers by the model's scan)."""
  slow_k: Array  # [B, N, K, Q, H]: the slow slots after this call
  slow_v: Array
  slow_table: Array  # int32 [K]
  count: Array  # int32: promoted frames held
  rep: Array  # float32 [B, N*H]: this call's representation
  similarity: Array  # float32: NaN before promotions are allowed
  promoted: Array  # bool


@dataclasses.dataclass(frozen=True)
class SlowFastUpstreamPolicy(SlowFastSettings):
  mode: ClassVar[str] = "upstream"

  def init(self, geom: Geometry) -> UpstreamState:
    r = self.cache_frames
    shape = (geom.num_layers, geom.batch, geom.num_heads, r, geom.frame_tokens, geom.head_dim)
    return UpstreamState(jnp.zeros(shape, geom.dtype), jnp.zeros(shape, geom.dtype),
                         jnp.full((geom.num_layers, r), -1, jnp.int32),
                         jnp.zeros((geom.num_layers,), jnp.int32),
                         jnp.zeros((geom.num_layers, geom.batch, geom.num_heads * geom.head_dim), jnp.float32),
                         jnp.zeros((geom.num_layers,), bool), jnp.zeros((), jnp.int32))

  def _upstream_begin(self, st: UpstreamState, chunk: Chunk):
    """Upstream's first-call bookkeeping: when the cache is full, the fast region rolls by one chunk."""
    s, kslow, f, r = self.sink_frames, self.slow_frames, chunk.frames, self.cache_frames
    roll = st.local_end + f > r
    lo = s + kslow
    def rolled(a, axis):  # only the fast region is touched
      region = jax.lax.slice_in_dim(a, lo, r, axis=axis)
      region = jnp.where(roll, jnp.roll(region, -f, axis=axis), region)
      return jax.lax.dynamic_update_slice_in_dim(a, region, lo, axis=axis)
    k, v, table = rolled(st.k, 3), rolled(st.v, 3), rolled(st.table, 1)
    local_end = jnp.minimum(st.local_end + f, r)  # frames in use once the chunk is written
    return st._replace(k=k, v=v, table=table), local_end

  def _upstream_positions(self, local_end: Array, chunk: Chunk):
    """Slot-order positions: sink slots at 0.., the other slots in use contiguous up to the anchor."""
    s, f, r = self.sink_frames, chunk.frames, self.cache_frames
    anchor = jnp.minimum(chunk.start + f - 1, self.rope_length - 1)
    m = local_end - jnp.minimum(s, local_end)  # slots after the sink, the chunk's included
    start = jnp.maximum(0, anchor - (m - 1))
    slot = jnp.arange(r - f, dtype=jnp.int32)
    pos = jnp.where(slot < s, slot, start + slot - s)
    valid = slot < local_end - f
    chunk_pos = start + (local_end - f - jnp.minimum(s, local_end)) + jnp.arange(f, dtype=jnp.int32)
    return jnp.where(valid, pos, -1), valid, chunk_pos

  def _upstream_hook(self, params, local_end: Array, chunk: Chunk) -> Callable:
    s, kslow, f, r = self.sink_frames, self.slow_frames, chunk.frames, self.cache_frames
    allow = chunk.start >= self.fast_frames
    threshold = params["threshold"]

    def fn(layer: UpstreamLayer, kv: FrameKV) -> tuple[tuple[Array, Array], UpstreamLayerOut]:
      k, v, table, count, rep, has_rep = layer  # k, v [B, N, R, Q, H]; table [R]; rep [B, N*H]
      cur = representation(kv.k)
      first = stored_kv(FrameKV(kv.k[None, :, :1], kv.v[None, :, :1]), jnp.zeros((1,), jnp.int32), chunk.grid)
      new_frame = lambda a: a[0]  # noqa: E731  the chunk's first frame, at frame 0: [B, N, 1, Q, H]
      sim = jnp.mean(cosine(cur, rep))
      guard = (count > 0) & (table[jnp.maximum(s + count - 1, 0)] == chunk.start)
      promote = allow & ~guard & (~has_rep | (sim < threshold))
      full = count >= kslow
      slow_k, slow_v, slow_t = k[:, :, s:s + kslow], v[:, :, s:s + kslow], table[s:s + kslow]
      shift = lambda a, new: jnp.concatenate([a[1:], new], axis=0)  # noqa: E731  FIFO over the first axis
      target = jnp.where(full, kslow - 1, count)
      onehot = jnp.arange(kslow) == target
      def put(a, new, axis):  # writes `new` at the target slot (after the FIFO shift when full)
        shifted = jnp.moveaxis(shift(jnp.moveaxis(a, axis, 0), jnp.moveaxis(new, axis, 0)), 0, axis)
        sel = onehot.reshape((1,) * axis + (kslow,) + (1,) * (a.ndim - axis - 1))
        placed = jnp.where(sel, jnp.broadcast_to(new, a.shape), a)
        return jnp.where(full, shifted, placed)
      new_k = jnp.where(promote, put(slow_k, new_frame(first.k).astype(k.dtype), 2), slow_k)
      new_v = jnp.where(promote, put(slow_v, new_frame(first.v).astype(v.dtype), 2), slow_v)
      new_t = jnp.where(promote, put(slow_t, chunk.start[None], 0), slow_t)
      view_k = jnp.concatenate([k[:, :, :s], new_k, k[:, :, s + kslow:r - f]], axis=2)  # [B, N, R - F, Q, H]
      view_v = jnp.concatenate([v[:, :, :s], new_v, v[:, :, s + kslow:r - f]], axis=2)
      aux = UpstreamLayerOut(new_k, new_v, new_t, count + promote.astype(jnp.int32) * (~full).astype(jnp.int32),
                             cur, jnp.where(allow, sim, jnp.nan), promote)
      return (view_k, view_v), aux

    return fn

  def _upstream_after(self, st: UpstreamState, aux: UpstreamLayerOut):
    s, kslow = self.sink_frames, self.slow_frames
    new_k, new_v, new_t, count, cur, sim, promote = aux  # stacked over layers [L, ...]
    st = st._replace(k=st.k.at[:, :, :, s:s + kslow].set(new_k), v=st.v.at[:, :, :, s:s + kslow].set(new_v),
                     table=st.table.at[:, s:s + kslow].set(new_t), count=count, rep=cur,
                     has_rep=jnp.ones_like(st.has_rep))
    return st, {"similarity": sim, "promoted": promote, "table": st.table, "slow_count": count}

  def _upstream_end(self, st: UpstreamState, local_end: Array, kv: FrameKV, chunk: Chunk):
    f = chunk.frames
    at = local_end - f
    stored = stored_kv(kv, jnp.zeros((f,), jnp.int32), chunk.grid)  # at frame 0: [L, B, N, F, Q, H]
    k = jax.lax.dynamic_update_slice_in_dim(st.k, stored.k.astype(st.k.dtype), at, axis=3)
    v = jax.lax.dynamic_update_slice_in_dim(st.v, stored.v.astype(st.v.dtype), at, axis=3)
    frames = jnp.broadcast_to(chunk.positions, (st.table.shape[0], f))
    table = jax.lax.dynamic_update_slice_in_dim(st.table, frames, at, axis=1)
    return st._replace(k=k, v=v, table=table, local_end=local_end)

  # ============================================================================================ protocol

  def begin_chunk(self, params, st: UpstreamState, chunk: Chunk):
    return self._upstream_begin(st, chunk)  # ctx: the frames in use once the chunk is written

  def call_view(self, params, st: UpstreamState, local_end, chunk: Chunk) -> CallView:
    pos, valid, chunk_pos = self._upstream_positions(local_end, chunk)
    b = st.k.shape[1]
    shift = jnp.where(valid, pos, 0)  # keys stored at frame 0: turned to their slot's position
    view = MemoryView(None, None, jnp.broadcast_to(shift, (b, pos.shape[0])),
                      jnp.broadcast_to(valid, (b, pos.shape[0])))
    layers = UpstreamLayer(st.k, st.v, st.table, st.count, st.rep, st.has_rep)
    return CallView(view, chunk_pos, LayerHook(self._upstream_hook(params, local_end, chunk), layers))

  def after_call(self, params, st: UpstreamState, local_end, aux: UpstreamLayerOut):
    return self._upstream_after(st, aux)

  def end_chunk(self, params, st: UpstreamState, local_end, kv, chunk: Chunk):
    pos, _, chunk_pos = self._upstream_positions(local_end, chunk)
    st = self._upstream_end(st, local_end, kv, chunk)
    return st, {"table": st.table, "slow_count": st.count, "local_end": local_end, "memory_positions": pos,
                "chunk_positions": chunk_pos}

  # ============================================================================================ prompt switches

  default_recache = Recache.ALL_MEMORY

  def recache_width(self, geom: Geometry, recache: Recache) -> int:
    """A switch re-keys every entry any layer holds: the shared sink and fast slots, and each layer's own slow
    slots, so at most R + (L - 1) K distinct frames (and no more than the video has). That is the compiled width of
    the re-run call: 369 frames for the defaults and 30 layers."""
    if recache is not Recache.ALL_MEMORY:
      raise ValueError(f"slow_fast: recache={recache.value!r}; slow_fast re-caches all_memory (its slow memory "
                       "holds frames from anywhere in the video), or none")
    return min(self.cache_frames + (geom.num_layers - 1) * self.slow_frames, geom.total_frames)

  def recache_frames(self, st: UpstreamState, chunk_start: int, width: int) -> np.ndarray:
    """The frames held by any layer's slot, in frame order, then -1: int [width] (the batch shares the table)."""
    table = np.asarray(st.table)
    held = np.unique(table[table >= 0])
    out = np.full((width,), -1, np.int64)
    out[:len(held)] = held
    return out

  def recache_plan(self, params, st: UpstreamState, chunk: Chunk, frames: Array, keep_sink: bool):
    """The sink frames re-run at their slots' positions 0..S-1 and the others, in frame order, contiguous up to
    the position just before the switch chunk's (as the chunk's view lays out the slots after the sink; at least
    S). With the global sink kept (once the fast window has moved past it), the sink keeps its keys and the re-run
    call attends to them."""
    s = self.sink_frames
    keep = keep_sink & (chunk.start - (self.fast_frames - chunk.frames) > s)
    _, local_end = self._upstream_begin(st, chunk)
    _, _, chunk_pos = self._upstream_positions(local_end, chunk)
    rerun = frames >= 0
    sink = rerun & (frames < s)
    rest = rerun & ~sink
    rank = jnp.cumsum(rest) - 1  # [W]: order among the re-run frames after the sink
    pos = jnp.where(sink, frames, jnp.maximum(s, chunk_pos[0] - jnp.sum(rest) + rank))
    keys = rerun & ~(keep & sink)
    r = st.k.shape[3]
    b = st.k.shape[1]
    kept = (jnp.arange(r) < s) & (st.table[0] >= 0) & keep  # [R]: the sink slots, as every layer holds them
    view = MemoryView(st.k, st.v, jnp.broadcast_to(jnp.arange(r, dtype=jnp.int32), (b, r)),  # slot i at position i
                      jnp.broadcast_to(kept, (b, r)))
    return st, RecachePlan(frames, rerun, keys, view, jnp.where(rerun, pos, 0))

  def recache_store(self, params, st: UpstreamState, plan: RecachePlan, kv, chunk: Chunk, keep_sink: bool):
    """Each layer's slot takes the re-run keys (at frame 0, as the cache keeps them) and values of the frame it
    holds, where that frame served as a key; its promotion bookkeeping (count, previous representation) stays."""
    w = plan.frames.shape[-1]
    stored = stored_kv(kv, jnp.zeros((w,), jnp.int32), chunk.grid)  # [L, B, N, W, Q, H] at frame 0
    match = (st.table[:, :, None] == plan.frames[None, None, :]) & plan.keys[None, None, :]  # [L, R, W]
    match &= (st.table >= 0)[:, :, None]
    hit = match.any(-1)  # [L, R]
    idx = jnp.argmax(match, axis=-1)  # [L, R]
    take = lambda a: jnp.take_along_axis(a, idx[:, None, None, :, None, None], axis=3)  # noqa: E731  [L, B, N, R, Q, H]
    put = hit[:, None, None, :, None, None]
    return st._replace(k=jnp.where(put, take(stored.k).astype(st.k.dtype), st.k),
                       v=jnp.where(put, take(stored.v).astype(st.v.dtype), st.v))

  def describe(self, chunk, trace, calls):
    t = {k: np.asarray(v) for k, v in trace.items()}
    sims = np.asarray(calls["similarity"])  # [calls, L]
    promoted = np.asarray(calls["promoted"])  # [calls, L]
    per_layer = []
    for layer in range(sims.shape[1]):
      hit = np.flatnonzero(promoted[:, layer])
      per_layer.append({"slots": t["table"][layer].tolist(), "slow_count": int(t["slow_count"][layer]),
                        "promotion_call": int(hit[0]) if hit.size else -1,
                        "similarity": [None if np.isnan(x) else round(float(x), 6) for x in sims[:, layer]]})
    return {"local_end": int(t["local_end"]), "slot_positions": t["memory_positions"].tolist(),
            "chunk_positions": t["chunk_positions"].tolist(), "layers": per_layer}
