"""Context Forcing's Slow-Fast memory (TIGER-AI-Lab/Context-Forcing @f44bac6, `wan/modules/causal_model.py`).

A call attends to a sink (the first S frames, positions 0..S-1), a slow memory of up to K promoted frames (FIFO)
and a fast window of the most recent frames (`fast_frames`, the chunk included). A chunk's first frame is promoted
into the slow memory when its keys look new: the cosine similarity between the mean of the chunk's pre-RoPE keys
and a stored representation falls below `threshold`. Positions are bounded: everything after the sink is numbered
contiguously so that the chunk ends at min(c + F - 1, rope_length - 1).

`mode="upstream"` reproduces the official code exactly: every layer decides on its own, on every call of the chunk
(4 denoising steps, then the refill) until one promotes, comparing with the previous call's representation; the
promoted keys are that call's (noisy) keys; while the cache fills, chunks are written in slot order (so frames sit in
the slow slots until promotions overwrite them) and keys are positioned by slot.

`mode="clean"` (the default) decides once per chunk on the clean refill keys of layer 0, against the representation
of the last promoted chunk, for all layers at once, per sample; slots never hold frames that were not promoted.

Keys: clean mode keeps a reservoir (keys rotated at their frame index, `rf_jax.memory.reservoir`) and turns each
entry by the distance its bounded position moves it (`MemoryView.shift`); upstream mode keeps its own slot-order
cache, head-major, of keys rotated at frame position 0 (the height/width part of RoPE only) and turns every entry
from 0 to its slot's position.

Letters: L layers, B batch, K slow slots, Q tokens per frame, N heads, H head dim, F chunk frames.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.memory.base import CallView, Chunk, Policy, moved_by, traced
from rf_jax.memory.reservoir import Geometry, Reservoir, init_reservoir, stored_kv, write_frames
from rf_jax.model.attention import FrameKV
from rf_jax.model.dit import LayerHook, MemoryView

Array = jax.Array


def _cosine(a: Array, b: Array, eps: float = 1e-8) -> Array:
  """torch.nn.functional.cosine_similarity over the last axis."""
  na = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
  nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
  return (a * b).sum(-1) / (na * nb)


def _representation(k: Array) -> Array:
  """Mean of a chunk's keys over its tokens, heads flattened: k [B, F, Q, N, H] -> [B, N*H] float32."""
  b = k.shape[0]
  return k.astype(jnp.float32).reshape(b, -1, k.shape[-2] * k.shape[-1]).mean(axis=1)


class CleanState(NamedTuple):
  res: Reservoir  # slots [0, S) sink, [S, S + fast - F) fast ring, [S + fast - F, + K) slow
  promoted: Array  # int32 [B]: promotions so far (the slow FIFO writes slot promoted % K)
  last_rep: Array  # float32 [B, N*H]: representation of the last promoted chunk
  has_rep: Array  # bool [B]


class UpstreamState(NamedTuple):
  k: Array  # [L, B, N, R, Q, H] upstream's cache in slot order (keys rotated at frame 0), R = S + K + fast
  v: Array
  table: Array  # int32 [L, R]: frame held by each slot (-1 empty), per layer
  count: Array  # int32 [L]: promoted frames held (0..K)
  rep: Array  # float32 [L, B, N*H]: the previous call's representation
  has_rep: Array  # bool [L]
  local_end: Array  # int32: frames in use after the last chunk


@dataclasses.dataclass(frozen=True)
class SlowFastPolicy(Policy):
  sink_frames: int = 3
  slow_frames: int = 12
  fast_frames: int = 6
  rope_length: int = 21
  mode: Literal["clean", "upstream"] = "clean"
  threshold: float = traced(0.95)

  name = "slow_fast"

  def validate(self, chunk_frames: int) -> None:
    s, k, fast = self.sink_frames, self.slow_frames, self.fast_frames
    if self.mode not in ("clean", "upstream"):
      raise ValueError(f"slow_fast: mode={self.mode!r}; expected 'clean' or 'upstream'")
    if s < 0 or k < 1:
      raise ValueError(f"slow_fast: sink_frames={s} must be >= 0 and slow_frames={k} >= 1")
    if fast < chunk_frames:
      raise ValueError(f"slow_fast: fast_frames={fast} must be at least the chunk's {chunk_frames} frames")
    if self.rope_length < s + k + fast:
      raise ValueError(f"slow_fast: rope_length={self.rope_length} must be >= sink + slow + fast = {s + k + fast}")

  @property
  def cache_frames(self) -> int:
    return self.sink_frames + self.slow_frames + self.fast_frames

  def init(self, geom: Geometry):
    if self.mode == "clean":
      res = init_reservoir(geom, self.cache_frames - geom.chunk_frames)
      rep = jnp.zeros((geom.batch, geom.num_heads * geom.head_dim), jnp.float32)
      return CleanState(res, jnp.zeros((geom.batch,), jnp.int32), rep, jnp.zeros((geom.batch,), bool))
    r = self.cache_frames
    shape = (geom.num_layers, geom.batch, geom.num_heads, r, geom.frame_tokens, geom.head_dim)
    return UpstreamState(jnp.zeros(shape, geom.dtype), jnp.zeros(shape, geom.dtype),
                         jnp.full((geom.num_layers, r), -1, jnp.int32),
                         jnp.zeros((geom.num_layers,), jnp.int32),
                         jnp.zeros((geom.num_layers, geom.batch, geom.num_heads * geom.head_dim), jnp.float32),
                         jnp.zeros((geom.num_layers,), bool), jnp.zeros((), jnp.int32))

  # ============================================================================================ clean mode

  def _clean_positions(self, st: CleanState, chunk: Chunk) -> tuple[Array, Array]:
    """Where each slot is shown (int32 [B, R], -1 when empty) and the chunk ([B, F]): [sink at 0..S-1 | slow and
    fast frames in frame order (a slow copy before its fast twin) | chunk], the part after the sink numbered
    contiguously up to the anchor (or from S while the memory is short)."""
    s, f = self.sink_frames, chunk.frames
    res = st.res
    region = (jnp.arange(res.capacity) < s + self.fast_frames - f).astype(jnp.int32)  # 0 = slow slot
    valid = res.frame >= 0
    rest = valid & (res.frame >= s)  # [B, R]
    order = res.frame * 2 + region
    rank = ((order[:, None, :] < order[:, :, None]) & rest[:, None, :]).sum(-1)  # [B, R]
    m = rest.sum(-1) + f  # [B]: frames after the sink, the chunk's included
    anchor = jnp.minimum(chunk.start + f - 1, self.rope_length - 1)
    start = jnp.maximum(s, anchor - (m - 1))  # [B]
    pos = jnp.where(rest, start[:, None] + rank, res.frame)
    pos = jnp.where(valid, pos, -1)
    chunk_pos = (start + m - f)[:, None] + jnp.arange(f, dtype=jnp.int32)  # [B, F]
    return pos, chunk_pos

  def _clean_view(self, st: CleanState, chunk: Chunk) -> CallView:
    res = st.res
    valid = res.frame >= 0
    pos, chunk_pos = self._clean_positions(st, chunk)
    shift = moved_by(pos, res.frame, valid, chunk_pos, chunk)
    return CallView(MemoryView(res.k, res.v, shift, valid), chunk.positions)

  def _clean_end(self, params, st: CleanState, kv: FrameKV, chunk: Chunk):
    s, f, kslow = self.sink_frames, chunk.frames, self.slow_frames
    ring_end = s + self.fast_frames - f
    res = st.res
    pos, chunk_pos = self._clean_positions(st, chunk)
    rep = _representation(kv.k[0])  # layer 0, clean refill keys  [B, N*H]
    sim = _cosine(rep, st.last_rep)
    eligible = chunk.start >= s
    promote = eligible & (~st.has_rep | (sim < params["threshold"]))  # [B]
    # The chunk's first frame goes to the slow FIFO slot of each promoting sample (capacity = no write).
    slot = jnp.where(promote, ring_end + st.promoted % kslow, res.capacity)  # [B]
    rows = jnp.arange(slot.shape[0])
    first = stored_kv(FrameKV(kv.k[:, :, :1], kv.v[:, :, :1]), chunk.positions[:1], chunk.grid)  # [L, B, N, 1, Q, H]
    put = lambda a, x: a.at[:, rows, :, slot].set(jnp.moveaxis(x[:, :, :, 0], 1, 0).astype(a.dtype),  # noqa: E731
                                                   mode="drop")  # [B, L, N, Q, H] at (sample, its slot)
    res = Reservoir(put(res.k, first.k), put(res.v, first.v), res.frame.at[rows, slot].set(chunk.start, mode="drop"),
                    res.key_mean)
    res = write_frames(res, kv, chunk.start, s, chunk.grid, ring_end)  # the fast window
    new = CleanState(res, st.promoted + promote.astype(jnp.int32), jnp.where(promote[:, None], rep, st.last_rep),
                     st.has_rep | promote)
    trace = {"memory_frames": st.res.frame, "memory_positions": pos, "chunk_positions": chunk_pos,
             "similarity": jnp.where(eligible & st.has_rep, sim, jnp.nan), "promoted": promote,
             "slow_frames": res.frame[:, ring_end:]}
    return new, trace

  # ============================================================================================ upstream mode

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

    def fn(layer, kv: FrameKV):
      k, v, table, count, rep, has_rep = layer  # k, v [B, N, R, Q, H]; table [R]; rep [B, N*H]
      cur = _representation(kv.k)
      first = stored_kv(FrameKV(kv.k[None, :, :1], kv.v[None, :, :1]), jnp.zeros((1,), jnp.int32), chunk.grid)
      new_frame = lambda a: a[0]  # noqa: E731  the chunk's first frame, at frame 0: [B, N, 1, Q, H]
      sim = jnp.mean(_cosine(cur, rep))
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
      aux = (new_k, new_v, new_t, count + promote.astype(jnp.int32) * (~full).astype(jnp.int32), cur,
             jnp.where(allow, sim, jnp.nan), promote)
      return (view_k, view_v), aux

    return fn

  def _upstream_after(self, st: UpstreamState, aux):
    s, kslow = self.sink_frames, self.slow_frames
    new_k, new_v, new_t, count, cur, sim, promote = aux  # stacked over layers
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

  def begin_chunk(self, params, st, chunk: Chunk):
    if self.mode == "clean":
      return st, None
    st, local_end = self._upstream_begin(st, chunk)
    return st, local_end

  def call_view(self, params, st, ctx, chunk: Chunk) -> CallView:
    if self.mode == "clean":
      return self._clean_view(st, chunk)
    local_end = ctx
    pos, valid, chunk_pos = self._upstream_positions(local_end, chunk)
    b = st.k.shape[1]
    shift = jnp.where(valid, pos, 0)  # keys stored at frame 0: turned to their slot's position
    view = MemoryView(None, None, jnp.broadcast_to(shift, (b, pos.shape[0])),
                      jnp.broadcast_to(valid, (b, pos.shape[0])))
    hook = LayerHook(self._upstream_hook(params, local_end, chunk), (st.k, st.v, st.table, st.count, st.rep,
                                                                    st.has_rep))
    return CallView(view, chunk_pos, hook)

  def after_call(self, params, st, ctx, aux):
    if self.mode == "clean":
      return st, {}
    return self._upstream_after(st, aux)

  def end_chunk(self, params, st, ctx, kv, chunk: Chunk):
    if self.mode == "clean":
      return self._clean_end(params, st, kv, chunk)
    local_end = ctx
    pos, _, chunk_pos = self._upstream_positions(local_end, chunk)
    st = self._upstream_end(st, local_end, kv, chunk)
    return st, {"table": st.table, "slow_count": st.count, "local_end": local_end, "memory_positions": pos,
                "chunk_positions": chunk_pos}

  def describe(self, chunk, trace, calls):
    t = {k: np.asarray(v) for k, v in trace.items()}
    if self.mode == "clean":
      frames, pos = t["memory_frames"][0], t["memory_positions"][0]
      order = [i for i in np.argsort(pos, kind="stable") if frames[i] >= 0]
      sim = float(t["similarity"][0])
      return {"memory_frames": [int(frames[i]) for i in order], "memory_positions": [int(pos[i]) for i in order],
              "chunk_positions": t["chunk_positions"][0].tolist(),
              "similarity": None if np.isnan(sim) else round(sim, 6), "promoted": bool(t["promoted"][0]),
              "slow_frames": sorted(int(x) for x in t["slow_frames"][0] if x >= 0)}
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
