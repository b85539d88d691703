"""Context Forcing's Slow-Fast memory (TIGER-AI-Lab/Context-Forcing @f44bac6, `wan/modules/causal_model.py`), in
its clean form.

A call attends to a sink (the first S frames, positions 0..S-1), a slow memory of up to K promoted frames (FIFO)
and a fast window of the most recent frames (`fast_frames`, the chunk included). A chunk's first frame is promoted
into the slow memory when its keys look new: the cosine similarity between the mean of the chunk's pre-RoPE keys
and a stored representation falls below `threshold`. Positions are bounded: everything after the sink is numbered
contiguously so that the chunk ends at min(c + F - 1, rope_length - 1).

This policy decides once per chunk on the clean refill keys of layer 0, against the representation of the last
promoted chunk, for all layers at once, per sample; slots never hold frames that were not promoted. It keeps a
reservoir (keys rotated at their frame index, `rf_jax.memory.reservoir`) and turns each entry by the distance its
bounded position moves it (`MemoryView.shift`). The official code's own behaviour, decided per layer on every call,
is `SlowFastUpstreamPolicy` (slow_fast_upstream.py); both read `{"policy": "slow_fast", "mode": ...}`.

Letters: L layers, B batch, K slow slots, Q tokens per frame, N heads, H head dim, F chunk frames.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.memory.base import CallView, Chunk, Policy, Recache, RecachePlan, moved_by, traced
from rf_jax.memory.reservoir import Geometry, Reservoir, frame_key_mean, init_reservoir, stored_kv, write_frames
from rf_jax.model.attention import FrameKV
from rf_jax.model.dit import MemoryView

Array = jax.Array


def cosine(a: Array, b: Array, eps: float = 1e-8) -> Array:
  """torch.nn.functional.cosine_similarity over the last axis."""
  na = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
  nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
  return (a * b).sum(-1) / (na * nb)


def representation(k: Array) -> Array:
  """Mean of a chunk's keys over its tokens, heads flattened: k [B, F, Q, N, H] -> [B, N*H] float32."""
  b = k.shape[0]
  return k.astype(jnp.float32).reshape(b, -1, k.shape[-2] * k.shape[-1]).mean(axis=1)


@dataclasses.dataclass(frozen=True)
class SlowFastSettings(Policy):
  """The settings both Slow-Fast policies share, and their checks."""
  sink_frames: int = 3
  slow_frames: int = 12
  fast_frames: int = 6
  rope_length: int = 21
  threshold: float = traced(0.95)

  name = "slow_fast"
  mode: ClassVar[str] = ""

  def validate(self, chunk_frames: int) -> None:
    s, k, fast = self.sink_frames, self.slow_frames, self.fast_frames
    if s < 0 or k < 1:
      raise ValueError(f"slow_fast: sink_frames={s} must be >= 0 and slow_frames={k} >= 1")
    if fast < chunk_frames:
      raise ValueError(f"slow_fast: fast_frames={fast} must be at least the chunk's {chunk_frames} frames")
    if self.rope_length < s + k + fast:
      raise ValueError(f"slow_fast: rope_length={self.rope_length} must be >= sink + slow + fast = {s + k + fast}")

  @property
  def cache_frames(self) -> int:
    return self.sink_frames + self.slow_frames + self.fast_frames


class CleanState(NamedTuple):
  res: Reservoir  # slots [0, S) sink, [S, S + fast - F) fast ring, [S + fast - F, + K) slow
  promoted: Array  # int32 [B]: promotions so far (the slow FIFO writes slot promoted % K)
  last_rep: Array  # float32 [B, N*H]: representation of the last promoted chunk
  has_rep: Array  # bool [B]


@dataclasses.dataclass(frozen=True)
class SlowFastPolicy(SlowFastSettings):
  mode: ClassVar[str] = "clean"

  def init(self, geom: Geometry) -> CleanState:
    res = init_reservoir(geom, self.cache_frames - geom.chunk_frames)
    rep = jnp.zeros((geom.batch, geom.num_heads * geom.head_dim), jnp.float32)
    return CleanState(res, jnp.zeros((geom.batch,), jnp.int32), rep, jnp.zeros((geom.batch,), bool))

  def _positions(self, st: CleanState, chunk: Chunk) -> tuple[Array, Array]:
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

  def call_view(self, params, st: CleanState, ctx, chunk: Chunk) -> CallView:
    res = st.res
    valid = res.frame >= 0
    pos, chunk_pos = self._positions(st, chunk)
    shift = moved_by(pos, res.frame, valid, chunk_pos, chunk)
    return CallView(MemoryView(res.k, res.v, shift, valid), chunk.positions)

  def end_chunk(self, params, st: CleanState, ctx, kv: FrameKV, chunk: Chunk):
    s, f, kslow = self.sink_frames, chunk.frames, self.slow_frames
    ring_end = s + self.fast_frames - f
    res = st.res
    pos, chunk_pos = self._positions(st, chunk)
    rep = representation(kv.k[0])  # layer 0, clean refill keys  [B, N*H]
    sim = cosine(rep, st.last_rep)
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

  # ------------------------------------------------------------------------------------------- prompt switches

  default_recache = Recache.ALL_MEMORY

  def recache_width(self, geom: Geometry, recache: Recache) -> int:
    """A switch re-caches the whole memory: the sink, the fast window and the slow memory (promoted frames)."""
    if recache is not Recache.ALL_MEMORY:
      raise ValueError(f"slow_fast: recache={recache.value!r}; slow_fast re-caches all_memory (its slow memory "
                       "holds frames from anywhere in the video), or none")
    return self.cache_frames - geom.chunk_frames

  def recache_frames(self, state: CleanState, chunk_start: int, width: int) -> np.ndarray:
    """Each sample's slots' frames [B, R] (promoted frames differ per sample), read from the state."""
    return np.asarray(state.res.frame)

  def recache_plan(self, params, st: CleanState, chunk: Chunk, frames: Array, keep_sink: bool):
    """Every held frame re-runs at the position the switch chunk's view shows it (bounded by rope_length), slot by
    slot; with the global sink kept (once the fast window has moved past it), the sink keeps its keys."""
    s = self.sink_frames
    keep = keep_sink & (chunk.start - (self.fast_frames - chunk.frames) > s)
    pos, _ = self._positions(st, chunk)  # [B, R]
    rerun = frames >= 0
    keys = rerun & ~(keep & (jnp.arange(st.res.capacity) < s)[None])
    kept = (jnp.arange(st.res.capacity) < s)[None] & rerun & keep
    return st, RecachePlan(frames, rerun, keys, MemoryView(st.res.k, st.res.v, None, kept), jnp.maximum(pos, 0))

  def recache_store(self, params, st: CleanState, plan: RecachePlan, kv, chunk: Chunk, keep_sink: bool):
    """Slot i takes re-run frame i's keys (turned at its frame index) and values, where it served as a key."""
    res = st.res
    stored = stored_kv(kv, jnp.maximum(plan.frames, 0), chunk.grid)  # [L, B, N, R, Q, H], per-sample frames
    put = plan.keys[None, :, None, :, None, None]
    res = Reservoir(jnp.where(put, stored.k.astype(res.k.dtype), res.k), jnp.where(put, stored.v.astype(res.v.dtype),
                                                                                    res.v), res.frame,
                    jnp.where(plan.keys[..., None], frame_key_mean(kv.k[0]), res.key_mean))
    return st._replace(res=res)

  def describe(self, chunk, trace, calls):
    t = {k: np.asarray(v) for k, v in trace.items()}
    frames, pos = t["memory_frames"][0], t["memory_positions"][0]
    order = [i for i in np.argsort(pos, kind="stable") if frames[i] >= 0]
    sim = float(t["similarity"][0])
    return {"memory_frames": [int(frames[i]) for i in order], "memory_positions": [int(pos[i]) for i in order],
            "chunk_positions": t["chunk_positions"][0].tolist(),
            "similarity": None if np.isnan(sim) else round(sim, 6), "promoted": bool(t["promoted"][0]),
            "slow_frames": sorted(int(x) for x in t["slow_frames"][0] if x >= 0)}
