"""Relax Forcing's relaxed KV memory (zengqunzhao/Relax-Forcing @6d2b4fa), exactly as the official code behaves.

A chunk starting at frame c attends to [sink (first S frames), history (H frames picked by a score), tail (the T
frames before c)] plus itself. The history is the top-H of up to `num_candidates` frames spaced over the second half
of the "middle" frames (those between the sink and the tail still in the reservoir), scored once per chunk on
layer-0 key prototypes (pre-RoPE keys averaged over tokens, then heads, L2-normalised):

    score(h) = <p_h, p_sink> - lambda * <p_h, p_tail>

The choice is shared by all layers, all denoising calls and the refill. While the chunk's slot in the upstream cache
is <= S + 1 + T frames (the first chunks), the call attends densely to every cached frame at its true position.

Positions: `hybrid` places [sink, history] right before the tail (the attended set looks like one contiguous
window ending at the chunk); `absolute` keeps every frame at its index (the upstream ablation).

Upstream's cache holds the previous `reservoir_frames - F` frames (sink + a rolling window), and the selection
arithmetic here is its arithmetic. But once that cache is full, candidates come only from the second half of the
middle frames (c-58 ... c-16 for the 120-frame default): the older half is written and never read again. The
reservoir keeps only what can still be read, the sink and the frames from the oldest one any later chunk can pick
(`live_ring`: 58 ring slots instead of 115 for the default, half the bytes), with the same choices and outputs.

Keys are stored rotated at their frame index: with `absolute` positions every entry is read as stored; with `hybrid`
the sink and history are turned by the distance they move (`MemoryView.shift`), the tail not at all. Upstream
applies batch element 0's choice to the whole batch (`selection="batch0"`); `selection="per_sample"` (the default)
picks per sample, so batching never changes a sample's video.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.memory.base import CallView, Chunk, Policy, Recache, RecachePlan, moved_by, traced
from rf_jax.memory.reservoir import Geometry, Reservoir, init_reservoir, ring_slot, write_at, write_frames
from rf_jax.model.dit import MemoryView
from rf_jax.numerics import torch_linspace

Array = jax.Array


@functools.lru_cache(maxsize=64)
def candidate_table(max_middle: int, num_candidates: int) -> np.ndarray:
  """int32 [max_middle + 1, num_candidates]: row n lists the candidate middle indices for n middle frames, -1 pad.

  s = n // 2, C = min(num_candidates, n - s); C == 1 gives [s]; otherwise the float32 linspace(s, n - 1, C + 1),
  truncated to integers, duplicates removed, last point dropped.
  """
  table = np.full((max_middle + 1, num_candidates), -1, np.int32)
  for n in range(1, max_middle + 1):
    s = n // 2
    count = min(num_candidates, n - s)
    if count <= 0:
      continue
    if count == 1:
      idx = np.array([s])
    else:
      idx = np.unique(torch_linspace(s, n - 1, count + 1).astype(np.int64))[:-1]
    table[n, :len(idx)] = idx
  return table


def candidate_frames(c: int, sink: int, tail: int, cap: int, table: np.ndarray) -> list[int]:
  """The frames upstream can pick as history for a chunk starting at frame c (host arithmetic, as `begin_chunk`)."""
  first_middle = max(sink, c - (cap - sink))
  n = max(c - tail - first_middle, 0)
  return [first_middle + int(i) for i in table[min(n, cap)] if i >= 0]


@functools.lru_cache(maxsize=64)
def live_ring(reservoir_frames: int, chunk_frames: int, sink: int, tail: int, num_candidates: int) -> int:
  """Ring slots (after the sink) that keep every frame a chunk can still read: for every chunk start c, the frames
  from the oldest one that chunk c or any later chunk reads (dense warm-up frames, candidates, tail) up to c - 1.

  Found by running upstream's arithmetic over chunks until it repeats (once the cache is full, everything moves
  with c). At most the whole cache (`reservoir_frames - chunk_frames - sink`).
  """
  f = chunk_frames
  cap = reservoir_frames - f  # upstream's cache besides the chunk: sink + rolling window
  table = candidate_table(cap, num_candidates)
  starts = range(0, 3 * reservoir_frames + 4 * f, f)
  oldest = []
  for c in starts:
    dense = min(c, reservoir_frames - f) <= sink + 1 + tail
    read = list(range(c)) if dense else candidate_frames(c, sink, tail, cap, table) + list(range(c - tail, c))
    read = [x for x in read if x >= sink]
    oldest.append(min(read, default=c))
  need = 1
  for i, c in enumerate(starts):
    need = max(need, c - min(oldest[i:]))
  return min(need, cap - sink)


def _normalize(x: Array) -> Array:
  """F.normalize: x / max(||x||, 1e-12) over the last axis."""
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


class RelaxView(NamedTuple):
  """What `begin_chunk` fixes for a chunk: every call and the refill read the memory through it."""
  shift: Array | None  # int32 [B, M]: the extra turn of each entry (hybrid positions), or None (absolute)
  valid: Array  # bool [B, M]
  slots: Array  # int32 [B, M]: the reservoir slot of each entry
  trace: dict  # the chunk's diagnostics (candidates, scores, choice, frames and positions shown)


@dataclasses.dataclass(frozen=True)
class RelaxPolicy(Policy):
  sink_frames: int = 2
  history_frames: int = 1
  tail_frames: int = 1
  num_candidates: int = 4
  reservoir_frames: int = 120
  positions: Literal["hybrid", "absolute"] = "hybrid"
  selection: Literal["per_sample", "batch0"] = "per_sample"
  lam: float = traced(2.0)  # the redundancy weight lambda

  name = "relax"

  def validate(self, chunk_frames: int) -> None:
    s, h, t = self.sink_frames, self.history_frames, self.tail_frames
    for key, value, low in (("sink_frames", s, 1), ("history_frames", h, 1), ("tail_frames", t, 1),
                            ("num_candidates", self.num_candidates, 1)):
      if value < low:
        raise ValueError(f"relax: {key}={value} must be >= {low}")
    if h > self.num_candidates:
      raise ValueError(f"relax: history_frames={h} exceeds num_candidates={self.num_candidates}")
    if self.positions not in ("hybrid", "absolute"):
      raise ValueError(f"relax: positions={self.positions!r}; expected 'hybrid' or 'absolute'")
    if self.selection not in ("per_sample", "batch0"):
      raise ValueError(f"relax: selection={self.selection!r}; expected 'per_sample' or 'batch0'")
    if self.reservoir_frames - chunk_frames <= s + 1 + t:
      raise ValueError(f"relax: reservoir_frames={self.reservoir_frames} leaves no room for history: it must "
                       f"exceed sink + 1 + tail + chunk frames = {s + 1 + t + chunk_frames}")

  # ------------------------------------------------------------------------------------------- layout

  def capacity(self, chunk_frames: int) -> int:
    """Slots kept: the sink and the live ring (see `live_ring`)."""
    return self.sink_frames + live_ring(self.reservoir_frames, chunk_frames, self.sink_frames, self.tail_frames,
                                        self.num_candidates)

  def view_slots(self) -> int:
    """M: the relaxed memory (S + H + T) or the dense warm-up (at most S + 1 + T frames), whichever is larger."""
    return max(self.sink_frames + self.history_frames + self.tail_frames, self.sink_frames + 1 + self.tail_frames)

  def init(self, geom: Geometry) -> Reservoir:
    return init_reservoir(geom, self.capacity(geom.chunk_frames))

  # ------------------------------------------------------------------------------------------- selection

  def begin_chunk(self, params, res: Reservoir, chunk: Chunk):
    """Scores the candidates on the clean layer-0 keys already stored and fixes the chunk's memory view."""
    s, h, t, m = self.sink_frames, self.history_frames, self.tail_frames, self.view_slots()
    c, f = chunk.start, chunk.frames
    cap = self.reservoir_frames - f  # upstream's cache: the selection's arithmetic
    kept = res.capacity  # the slots this reservoir keeps: the sink and the live ring
    b = res.frame.shape[0]
    local_start = jnp.minimum(c, self.reservoir_frames - f)  # the chunk's slot in upstream's cache
    dense = local_start <= s + 1 + t

    first_middle = jnp.maximum(s, c - (cap - s))  # the oldest non-sink frame in upstream's cache
    n = jnp.maximum(c - t - first_middle, 0)
    table = jnp.asarray(candidate_table(cap, self.num_candidates))
    cand_mid = table[jnp.minimum(n, cap)]  # [C]
    cand_ok = (cand_mid >= 0) & ~dense
    cand_frame = jnp.where(cand_ok, first_middle + cand_mid, -1)

    slot_of = lambda frames: jnp.minimum(ring_slot(jnp.maximum(frames, 0), s, kept), kept - 1)  # noqa: E731

    def proto(frames):  # int [K] -> [B, H]: the key means of K frames pooled, then normalised
      return _normalize(res.key_mean[:, slot_of(frames)].mean(axis=1))

    sink_p = proto(jnp.arange(s, dtype=jnp.int32))  # [B, H]
    tail_p = proto(c - t + jnp.arange(t, dtype=jnp.int32))
    cand_p = _normalize(res.key_mean[:, slot_of(cand_frame)])  # [B, C, H]
    scores = (jnp.einsum("bch,bh->bc", cand_p, sink_p)
              - params["lam"] * jnp.einsum("bch,bh->bc", cand_p, tail_p))
    scores = jnp.where(cand_ok[None], scores, jnp.nan)
    top = self.choose(scores, cand_ok, cand_frame, chunk)  # [B, H] candidate indices
    hist_frame = jnp.where(jnp.take(cand_ok, top), jnp.take(cand_frame, top), -1)  # [B, H]

    # The view: dense = frames 0..c-1 at their positions; relaxed = [sink, history, tail].
    sink_frames = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    tail_frames = jnp.broadcast_to(c - t + jnp.arange(t, dtype=jnp.int32), (b, t))
    relaxed = jnp.concatenate([sink_frames, hist_frame, tail_frames], axis=1)
    relaxed = jnp.pad(relaxed, ((0, 0), (0, m - relaxed.shape[1])), constant_values=-1)
    dense_frames = jnp.where(jnp.arange(m) < c, jnp.arange(m, dtype=jnp.int32), -1)
    frames = jnp.where(dense, jnp.broadcast_to(dense_frames, (b, m)), relaxed)  # [B, M]
    valid = frames >= 0
    if self.positions == "hybrid":
      before_tail = c - t - (s + h)
      hybrid = jnp.concatenate([before_tail + jnp.arange(s + h, dtype=jnp.int32), c - t + jnp.arange(t)])
      hybrid = jnp.pad(hybrid, (0, m - hybrid.shape[0]), constant_values=-1)
      pos = jnp.where(dense, frames, jnp.broadcast_to(hybrid, (b, m)))
    else:
      pos = frames
    pos = jnp.where(valid, pos, -1)
    slots = slot_of(frames)
    shift = moved_by(pos, frames, valid, chunk.positions, chunk) if self.positions == "hybrid" else None
    trace = {"dense": dense, "num_middle": jnp.where(dense, 0, n), "candidates": cand_frame, "scores": scores,
             "history": hist_frame, "memory_frames": frames, "memory_positions": pos,
             "chunk_positions": chunk.positions, "sink_proto": sink_p, "tail_proto": tail_p,
             "candidate_protos": cand_p}
    return res, RelaxView(shift, valid, slots, trace)

  def choose(self, scores: Array, cand_ok: Array, cand_frame: Array, chunk: Chunk) -> Array:
    """The top-H candidates by score: scores [B, C] (NaN where no candidate) -> indices [B, H], in temporal order."""
    ranked = jnp.where(cand_ok[None], scores, -jnp.inf)
    if self.selection == "batch0":
      ranked = jnp.broadcast_to(ranked[:1], ranked.shape)
    _, top = jax.lax.top_k(ranked, self.history_frames)
    return jnp.sort(top, axis=-1)

  def call_view(self, params, res, view: RelaxView, chunk: Chunk) -> CallView:
    return CallView(MemoryView(res.k, res.v, view.shift, view.valid, view.slots), chunk.positions)  # in place

  def end_chunk(self, params, res: Reservoir, view: RelaxView, kv, chunk: Chunk):
    return write_frames(res, kv, chunk.start, self.sink_frames, chunk.grid), view.trace

  # ------------------------------------------------------------------------------------------- prompt switches

  default_recache = Recache.ALL_MEMORY

  def recache_width(self, geom: Geometry, recache: Recache) -> int:
    """A switch re-caches all of the memory: the sink and the live ring (every frame a later chunk can still pick
    as history, or read as tail), not only a window."""
    if recache is not Recache.ALL_MEMORY:
      raise ValueError(f"relax: recache={recache.value!r}; relax re-caches all_memory (its history comes from the "
                       "whole reservoir), or none")
    return self.capacity(geom.chunk_frames)

  def recache_frames(self, state, chunk_start: int, width: int) -> np.ndarray:
    """[sink frames 0..S-1 | the ring's frames c - ring .. c - 1] (-1 where there is none yet)."""
    s, c = self.sink_frames, chunk_start
    sink = np.where(np.arange(s) < c, np.arange(s), -1)
    tail = c - (width - s) + np.arange(width - s)
    return np.concatenate([sink, np.where(tail >= s, tail, -1)])

  def _keeps_sink(self, chunk: Chunk, width: int, keep_sink: bool) -> Array:
    """LongLive's global sink, here: the sink keeps its keys once the ring has moved past it."""
    return keep_sink & (chunk.start - (width - self.sink_frames) > self.sink_frames)

  def recache_plan(self, params, res: Reservoir, chunk: Chunk, frames: Array, keep_sink: bool):
    s = self.sink_frames
    keep = self._keeps_sink(chunk, frames.shape[0], keep_sink)
    rerun = frames >= 0
    keys = rerun & ~(keep & (frames < s))
    kept = (jnp.arange(res.capacity) < s)[None] & (res.frame >= 0) & keep  # [B, R]
    return res, RecachePlan(frames, rerun, keys, MemoryView(res.k, res.v, None, kept))

  def recache_store(self, params, res: Reservoir, plan: RecachePlan, kv, chunk: Chunk, keep_sink: bool):
    """Every re-run frame's keys, values and key mean (the score's prototype) replace its slot's."""
    slots = jnp.where(plan.keys, ring_slot(jnp.maximum(plan.frames, 0), self.sink_frames, res.capacity),
                      res.capacity)
    return write_at(res, kv, plan.frames, slots, chunk.grid)

  def describe(self, chunk, trace, calls):
    b0 = {k: np.asarray(v) for k, v in trace.items()}
    cands = [int(x) for x in b0["candidates"] if x >= 0]
    out = {"dense": bool(b0["dense"]), "memory_frames": [int(x) for x in b0["memory_frames"][0] if x >= 0],
           "memory_positions": [int(x) for x in b0["memory_positions"][0] if x >= 0],
           "chunk_positions": b0["chunk_positions"].tolist()}
    if cands:
      out.update(num_middle=int(b0["num_middle"]), candidates=cands,
                 scores=[round(float(x), 6) for x in b0["scores"][0][:len(cands)]],
                 history=[int(x) for x in b0["history"][0]])
    return out
