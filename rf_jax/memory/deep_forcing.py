"""Deep Forcing as vendored in the official Relax Forcing code (zengqunzhao/Relax-Forcing @6d2b4fa,
`wan/modules/deep_forcing_model.py`): a deep attention sink, participative compression of the rest of the cache to
the top-C tokens by Q.K against recent queries, and the sink's RoPE phase re-aligned to the current timeline.

Everything is per layer and token-level, in a buffer of W*Q token slots (sizes in tokens unless frames are named;
c the chunk's first frame, F its frames, S the sink frames, CAP / R the capacity / recent window):

  win_q      every call appends its RoPE-rotated queries to the layer's recent-query window (the last R kept).
  compress   a chunk's first call compresses iff (c + F)Q > G and FQ + L > WQ: over K_aug = cache[:L] ++ the call's
             rotated keys (T tokens), score s_t = <sum of the last min(|win_q|, T) queries, k_t> / (sqrt(H) N) (raw,
             no softmax; all heads), keep the sink, the recent region and the top_c best of the rest whose reuse
             count is below `topc_max_reuse` (ties: the lower index first), in ascending order; the kept top-C
             tokens' counts go up by one (without a limit, -1, counts stay 0 as upstream's do with its 0).
             top_c = min(CAP, WQ, T) - sink - recent (at least 0).
  no compr.  L' = L + (c + F)Q - G: the chunk's tokens go after the cache, counts 0.
  sink       in a compressing call the S frames' keys turn in place by delta frames on the time channels, so that
             the sink sits at c - L'/Q .. as if the cache ended at c - 1. The first delta is W - CAP/Q (upstream
             hard-codes 21 - capacity, right for its 21-frame window; the fixtures follow W - CAP/Q); then
             delta = desired - the previous desired.
Kept tokens keep their absolute positions: keys are stored rotated at their own frame (post-RoPE, as upstream) and
the queries sit at c .. c+F-1. The decision runs inside each layer (the scores need that layer's queries of this
call), so the policy hands the model a `LayerHook` with a per-layer validity; the chunk is the model's own and the
memory shows slots 0 .. L'-FQ-1.

Samples decide independently (upstream pads every sample to the longest kept list with zero keys, attended; with
one sample, the fixtures', that never arises).

Letters: L layers, B batch, T = W*Q token slots, Q tokens per frame, N heads, H head dim, F chunk frames, A = T + FQ
(the augmented cache), C = the most top-C tokens, P = R (recent queries).
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.memory.base import CallView, Chunk, Policy, Recache, RecachePlan
from rf_jax.memory.reservoir import Geometry
from rf_jax.model.attention import ChunkQKV
from rf_jax.model.dit import LayerHook, MemoryView
from rf_jax.model.rope import rope_cos_sin, shift_cos_sin
from rf_jax.ops.rope import apply_rope, rotate

Array = jax.Array

MAX_SINK_TURN = 1023  # upstream clips a sink turn to its RoPE table (1024 rows)


class DeepState(NamedTuple):
  k: Array  # [L, B, N, T, H] keys rotated at their own frame (the sink turned further), slot order
  v: Array  # [L, B, N, T, H]
  token: Array  # int32 [L, B, T]: global token id (frame * Q + i) per slot, -1 empty
  count: Array  # int32 [L, B, T]: times each slot's token was selected into the top-C
  local_end: Array  # int32 [L, B]: slots in use
  global_end: Array  # int32: G, tokens generated so far
  win_q: Array  # [L, B, P, N, H] the last P rotated queries, right-aligned
  win_len: Array  # int32: how many of them are real
  sink_base: Array  # int32 [L, B]: the sink's last desired start frame
  has_base: Array  # bool [L, B]
  sink_shift: Array  # int32 [L, B]: frames the sink has turned so far (sink frame f sits at f + shift)


class DeepLayer(NamedTuple):
  """One layer's part of the state, what the hook reads inside the layer."""
  k: Array  # [B, N, T, H]
  v: Array
  token: Array  # [B, T]
  count: Array
  local_end: Array  # [B]
  win_q: Array  # [B, P, N, H]
  sink_base: Array  # [B]
  has_base: Array
  sink_shift: Array


class DeepCall(NamedTuple):
  """What one layer's hook decided on one call (stacked over layers by the model's scan)."""
  layer: DeepLayer  # the layer's state after the call (the chunk's slots not yet written)
  end: Array  # int32 [B]: L' (slots in use during the call, the chunk's last)
  end_before: Array  # int32 [B]
  compressed: Array  # bool [B]
  delta: Array  # int32 [B]: the sink turn of this call
  scores: Array  # float32 [B, A]: the compression's scores (-inf on sink and recent, NaN past T)
  counts_before: Array  # int32 [B, A] (-1 past T)
  candidates: Array  # int32 [B, A]: the token id of every K_aug index (-1 past T)
  selected: Array  # int32 [B, C]: the chosen K_aug indices, ascending (-1 past the count)
  keep: Array  # int32 [B, T]: the kept K_aug indices, ascending (-1 past L')
  excluded: Array  # int32 [B]: candidates whose count reached the limit
  margin: Array  # float32 [B]: C-th best - (C+1)-th best allowed score (NaN when either is missing)
  sizes: Array  # int32 [B, 4]: T, recent, sink, top_c of the compression


class DeepCtx(NamedTuple):
  chunk: Chunk


@dataclasses.dataclass(frozen=True)
class DeepForcingPolicy(Policy):
  window_frames: int = 21  # W: the cache, the chunk included (upstream local_attn_size)
  sink_frames: int = 10  # S: the deep sink
  capacity_frames: int = 16  # CAP: what a compression keeps: sink + top-C + recent
  recent_frames: int = 4  # R: the recent window (queries scored with, keys always kept)
  topc_max_reuse: int = 7  # a token selected this many times cannot be selected again (-1: no limit)

  name = "deep_forcing"
  # Upstream settings a memory block may state, only at the value ported: the recent queries' scores are summed
  # (its "max" fusion is not ported) and the sink is never compressed away.
  fixed_settings = {"fusion": "sum", "keep_sinks": True}

  def validate(self, chunk_frames: int) -> None:
    if self.sink_frames < 0:
      raise ValueError(f"deep_forcing: sink_frames={self.sink_frames} must be >= 0")
    if self.window_frames < self.sink_frames + chunk_frames:
      raise ValueError(f"deep_forcing: window_frames={self.window_frames} must be at least sink_frames + chunk "
                       f"frames = {self.sink_frames + chunk_frames}")
    if self.recent_frames < chunk_frames:
      raise ValueError(f"deep_forcing: recent_frames={self.recent_frames} must be at least the chunk's "
                       f"{chunk_frames} frames (the recent region holds the chunk)")
    if self.capacity_frames < self.sink_frames + self.recent_frames:
      raise ValueError(f"deep_forcing: capacity_frames={self.capacity_frames} is smaller than sink_frames + "
                       f"recent_frames = {self.sink_frames + self.recent_frames}: no room for top-C tokens")
    if self.capacity_frames > self.window_frames:
      raise ValueError(f"deep_forcing: capacity_frames={self.capacity_frames} must be <= window_frames="
                       f"{self.window_frames}")
    if self.topc_max_reuse == 0 or self.topc_max_reuse < -1:
      raise ValueError(f"deep_forcing: topc_max_reuse={self.topc_max_reuse}: give the selections a token may have "
                       "(>= 1), or -1 for no limit (upstream spells no limit 0)")

  def init(self, geom: Geometry) -> DeepState:
    t, p = self.window_frames * geom.frame_tokens, self.recent_frames * geom.frame_tokens
    lb = (geom.num_layers, geom.batch)
    zeros = jnp.zeros(lb, jnp.int32)
    return DeepState(jnp.zeros((*lb, geom.num_heads, t, geom.head_dim), geom.dtype),
                     jnp.zeros((*lb, geom.num_heads, t, geom.head_dim), geom.dtype),
                     jnp.full((*lb, t), -1, jnp.int32), jnp.zeros((*lb, t), jnp.int32), zeros,
                     jnp.zeros((), jnp.int32), jnp.zeros((*lb, p, geom.num_heads, geom.head_dim), geom.dtype),
                     jnp.zeros((), jnp.int32), zeros, jnp.zeros(lb, bool), zeros)

  # ------------------------------------------------------------------------------------------------ the hook

  def _hook(self, st: DeepState, chunk: Chunk):
    f, c = chunk.frames, chunk.start
    g, win_len = st.global_end, st.win_len

    def fn(layer: DeepLayer, qkv: ChunkQKV):
      b, _, q_tok, n, h = qkv.k.shape
      t = layer.k.shape[2]
      fq = f * q_tok
      cos, sin = rope_cos_sin(chunk.positions, chunk.grid, h)  # [F, Q, H/2] absolute positions
      flat = lambda a: a.reshape(b, fq, n, h)  # noqa: E731  token-major (frame, h, w)
      q_rot, k_rot = flat(apply_rope(qkv.q, cos, sin)), flat(apply_rope(qkv.k, cos, sin))  # [B, FQ, N, H]
      # 1. the recent-query window, every call
      p = layer.win_q.shape[1]
      win = jnp.concatenate([layer.win_q, q_rot.astype(layer.win_q.dtype)], axis=1)[:, -p:]  # [B, P, N, H]
      new_len = jnp.minimum(win_len + fq, p)
      # 2. the branch
      end = layer.local_end  # [B]
      compress = (c + f) * q_tok > g
      compress = compress & (fq + end > t)  # [B]
      sel = self._compress(layer, k_rot, qkv.v, win, new_len, chunk, q_tok)
      # 3. no compression: the chunk after the cache
      plain_end = end + (c + f) * q_tok - g
      new_end = jnp.where(compress, sel["end"], plain_end)
      pick = lambda a, b_: jnp.where(compress.reshape((-1,) + (1,) * (a.ndim - 1)), a, b_)  # noqa: E731
      k, v = pick(sel["k"], layer.k), pick(sel["v"], layer.v)
      token, count = pick(sel["token"], layer.token), pick(sel["count"], layer.count)
      # 4. the sink turn (compressing calls only)
      delta, base, has_base = self._sink_delta(layer, new_end, chunk, q_tok, compress)
      turn = jnp.clip(delta, -MAX_SINK_TURN, MAX_SINK_TURN)
      tc, ts = shift_cos_sin(turn, h)  # [B, H/2]
      sink = (jnp.arange(t) < jnp.minimum(new_end, self.sink_frames * q_tok)[:, None])  # [B, T]
      turned = rotate(k, tc[:, None, None], ts[:, None, None])  # [B, N, T, H]
      k = jnp.where((sink & (delta != 0)[:, None])[:, None, :, None], turned, k)
      out = DeepLayer(k, v, token, count, new_end, win, base, has_base, layer.sink_shift + delta)
      valid = jnp.arange(t)[None] < (new_end - fq)[:, None]  # [B, T]: the memory, the chunk excluded
      aux = DeepCall(out, new_end, end, compress, delta,
                     *(jnp.where(compress.reshape((-1,) + (1,) * (sel[key].ndim - 1)), sel[key], fill)
                       for key, fill in (("scores", jnp.nan), ("counts_before", -1), ("candidates", -1),
                                         ("selected", -1), ("keep", -1), ("excluded", 0), ("margin", jnp.nan),
                                         ("sizes", 0))))
      return (k[:, :, :, None], v[:, :, :, None], valid), aux  # entries are tokens: [B, N, T, 1, H]

    return fn

  def _compress(self, layer: DeepLayer, k_rot: Array, v_new: Array, win: Array, win_len: Array, chunk: Chunk,
                q_tok: int) -> dict:
    """Participative compression of one layer (every sample), computed whatever the branch."""
    b, fq, n, h = k_rot.shape
    t = layer.k.shape[2]
    a_len = t + fq
    end = layer.local_end  # [B]
    idx = jnp.arange(a_len)
    # K_aug = cache[:L] ++ new: index i < L reads the cache, L <= i < L + FQ the new tokens
    src = jnp.where(idx[None] < end[:, None], idx[None], t + idx[None] - end[:, None])  # [B, A]
    in_aug = idx[None] < (end + fq)[:, None]
    src = jnp.where(in_aug, jnp.clip(src, 0, a_len - 1), a_len)  # a_len: zero row
    new_k = jnp.moveaxis(k_rot, 1, 2).astype(layer.k.dtype)  # [B, N, FQ, H]
    new_v = jnp.moveaxis(v_new.reshape(b, fq, n, h), 1, 2).astype(layer.v.dtype)
    zero = jnp.zeros((b, n, 1, h), layer.k.dtype)
    all_k = jnp.concatenate([layer.k, new_k, zero], axis=2)  # [B, N, A + 1, H]
    all_v = jnp.concatenate([layer.v, new_v, zero], axis=2)
    take = lambda a: jnp.take_along_axis(a, src[:, None, :, None], axis=2)  # noqa: E731
    aug_k, aug_v = take(all_k), take(all_v)  # [B, N, A, H]
    c0 = chunk.start * q_tok
    new_tok = jnp.broadcast_to(c0 + jnp.arange(fq, dtype=jnp.int32), (b, fq))
    pad = jnp.full((b, 1), -1, jnp.int32)
    aug_tok = jnp.take_along_axis(jnp.concatenate([layer.token, new_tok, pad], 1), src, axis=1)
    aug_cnt = jnp.take_along_axis(jnp.concatenate([layer.count, jnp.zeros((b, fq), jnp.int32), pad], 1), src, 1)
    total_len = end + fq  # T of upstream, [B]
    recent = jnp.minimum(win_len, total_len)  # R_eff
    p = win.shape[1]
    recent_rows = jnp.arange(p)[None] >= (p - recent)[:, None]  # the last R_eff of the right-aligned window
    qsum = jnp.sum(jnp.where(recent_rows[:, :, None, None], win.astype(jnp.float32), 0.0), axis=1)  # [B, N, H]
    scale = 1.0 / (math.sqrt(h) * n)
    scores = jnp.einsum("bnh,bnah->ba", qsum, aug_k.astype(jnp.float32),
                        precision=jax.lax.Precision.HIGHEST) * scale  # [B, A]
    sink = jnp.minimum(self.sink_frames * q_tok, total_len)  # [B]
    old_end = jnp.maximum(0, total_len - recent)
    is_recent = (idx[None] >= old_end[:, None]) & in_aug
    is_sink = idx[None] < sink[:, None]
    scores = jnp.where(is_recent | is_sink, -jnp.inf, scores)
    scores = jnp.where(in_aug, scores, jnp.nan)
    cap = min(self.capacity_frames * q_tok, t)
    total = jnp.minimum(jnp.maximum(cap, sink + recent), total_len)
    top_c = jnp.maximum(0, total - sink - recent)  # [B]
    cand_start = jnp.minimum(sink, old_end)
    candidate = (idx[None] >= cand_start[:, None]) & (idx[None] < old_end[:, None])
    limit = self.topc_max_reuse
    allowed = candidate & (aug_cnt < limit) if limit > 0 else candidate
    excluded = jnp.sum(candidate & ~allowed, axis=1).astype(jnp.int32)
    k_eff = jnp.minimum(top_c, jnp.sum(allowed, axis=1))  # [B]
    c_max = max(cap, 1)
    ranked = jnp.where(allowed, scores, -jnp.inf)
    best, order = jax.lax.top_k(ranked, min(c_max + 1, a_len))  # ties: the lower index first
    chosen = jnp.arange(best.shape[1])[None] < k_eff[:, None]
    selected_mask = jnp.zeros((b, a_len + 1), bool).at[jnp.arange(b)[:, None],
                                                       jnp.where(chosen, order, a_len)].set(True)[:, :a_len]
    keep_mask = (is_sink | selected_mask | is_recent) & in_aug
    keep_order = jnp.argsort(~keep_mask, axis=1, stable=True)[:, :t]  # kept K_aug indices first, ascending
    kept = jnp.arange(t)[None] < jnp.sum(keep_mask, axis=1)[:, None]  # [B, T]
    gather = lambda a: jnp.take_along_axis(a, keep_order[:, None, :, None], axis=2)  # noqa: E731
    kept4 = kept[:, None, :, None]
    k = jnp.where(kept4, gather(aug_k), 0).astype(layer.k.dtype)
    v = jnp.where(kept4, gather(aug_v), 0).astype(layer.v.dtype)
    token = jnp.where(kept, jnp.take_along_axis(aug_tok, keep_order, axis=1), -1)
    bump = jnp.take_along_axis(selected_mask, keep_order, axis=1) & (limit > 0)
    count = jnp.where(kept, jnp.take_along_axis(aug_cnt, keep_order, axis=1) + bump, 0)
    sel_sorted = jnp.sort(jnp.where(chosen, order, a_len), axis=1)[:, :c_max]
    width = best.shape[1]
    kth = jnp.take_along_axis(best, jnp.clip(k_eff - 1, 0, width - 1)[:, None], 1)[:, 0]
    nxt = jnp.take_along_axis(best, jnp.clip(k_eff, 0, width - 1)[:, None], 1)[:, 0]
    margin = jnp.where((k_eff > 0) & (k_eff < width) & jnp.isfinite(nxt), kth - nxt, jnp.nan)
    return {"k": k, "v": v, "token": token, "count": count, "end": jnp.sum(keep_mask, axis=1).astype(jnp.int32),
            "scores": scores, "counts_before": jnp.where(in_aug, aug_cnt, -1),
            "candidates": jnp.where(in_aug, aug_tok, -1),
            "selected": jnp.where(sel_sorted < a_len, sel_sorted, -1).astype(jnp.int32),
            "keep": jnp.where(kept, keep_order, -1).astype(jnp.int32), "excluded": excluded, "margin": margin,
            "sizes": jnp.stack([total_len, recent, sink, top_c], axis=1).astype(jnp.int32)}

  def _sink_delta(self, layer: DeepLayer, end: Array, chunk: Chunk, q_tok: int, compress: Array):
    """(delta [B], new base, has_base): the sink's turn in a compressing call (0 otherwise)."""
    s = self.sink_frames * q_tok
    sink_len = jnp.minimum(end, s)
    tail_start = jnp.maximum(s, end - self.window_frames * q_tok + s)
    desired = chunk.start - (end - tail_start) // q_tok - sink_len // q_tok
    first = self.window_frames - self.capacity_frames  # upstream: 21 - capacity (see the module docstring)
    delta = jnp.where(layer.has_base, desired - layer.sink_base, first)
    active = compress & (self.sink_frames > 0) & (sink_len > 0)
    delta = jnp.where(active, delta, 0).astype(jnp.int32)
    base = jnp.where(active, desired, layer.sink_base).astype(jnp.int32)
    return delta, base, layer.has_base | active

  # ------------------------------------------------------------------------------------------------ protocol

  def _layers(self, st: DeepState) -> DeepLayer:
    return DeepLayer(st.k, st.v, st.token, st.count, st.local_end, st.win_q, st.sink_base, st.has_base,
                     st.sink_shift)

  def begin_chunk(self, params, st: DeepState, chunk: Chunk):
    return st, DeepCtx(chunk)

  def call_view(self, params, st: DeepState, ctx: DeepCtx, chunk: Chunk) -> CallView:
    b, t = st.token.shape[1:]
    view = MemoryView(None, None, None, jnp.ones((b, t), bool))  # each layer gives its own validity
    return CallView(view, chunk.positions, LayerHook(self._hook(st, chunk), self._layers(st)))

  def after_call(self, params, st: DeepState, ctx: DeepCtx, aux: DeepCall):
    chunk = ctx.chunk
    q_tok = chunk.grid[0] * chunk.grid[1]
    lay = aux.layer
    st = DeepState(lay.k, lay.v, lay.token, lay.count, lay.local_end, (chunk.start + chunk.frames) * q_tok,
                   lay.win_q, jnp.minimum(st.win_len + chunk.frames * q_tok, lay.win_q.shape[2]), lay.sink_base,
                   lay.has_base, lay.sink_shift)
    t = st.token.shape[-1]
    slot = jnp.arange(t)
    fq = chunk.frames * q_tok
    own = (slot >= (aux.end - fq)[..., None]) & (slot < aux.end[..., None])  # [L, B, T]
    tokens = jnp.where(own, chunk.start * q_tok + slot - (aux.end - fq)[..., None],
                       jnp.where(slot < aux.end[..., None], st.token, -1))
    frames = jnp.where(tokens >= 0, tokens // q_tok, -1)
    sink = (tokens >= 0) & (frames < self.sink_frames) & ~own
    trace = {"end": aux.end, "end_before": aux.end_before, "compressed": aux.compressed, "delta": aux.delta,
             "sink_shift": st.sink_shift, "kv_token": tokens,
             "kv_position": jnp.where(sink, frames + st.sink_shift[..., None], frames), "global_end": st.global_end,
             "scores": aux.scores, "counts_before": aux.counts_before, "candidates": aux.candidates,
             "selected": aux.selected, "keep": aux.keep, "excluded": aux.excluded, "margin": aux.margin,
             "sizes": aux.sizes}
    return st, trace

  def end_chunk(self, params, st: DeepState, ctx: DeepCtx, kv, chunk: Chunk):
    """The refill's keys (rotated at the chunk's frames) and values into each layer's last FQ slots in use."""
    q_tok = chunk.grid[0] * chunk.grid[1]
    l, b, f = kv.k.shape[:3]
    n, h = kv.k.shape[-2:]
    fq = f * q_tok
    t = st.token.shape[-1]
    cos, sin = rope_cos_sin(chunk.positions, chunk.grid, h)
    k_new = jnp.moveaxis(apply_rope(kv.k, cos, sin).reshape(l, b, fq, n, h), 2, 3)  # [L, B, N, FQ, H]
    v_new = jnp.moveaxis(kv.v.reshape(l, b, fq, n, h), 2, 3)
    slot = jnp.arange(t)
    at = st.local_end - fq  # [L, B]
    rel = slot[None, None] - at[..., None]  # [L, B, T]
    own = (rel >= 0) & (rel < fq)
    pick = jnp.clip(rel, 0, fq - 1)
    gathered_k = jnp.take_along_axis(k_new, pick[:, :, None, :, None], axis=3)
    gathered_v = jnp.take_along_axis(v_new, pick[:, :, None, :, None], axis=3)
    own5 = own[:, :, None, :, None]
    k = jnp.where(own5, gathered_k.astype(st.k.dtype), st.k)
    v = jnp.where(own5, gathered_v.astype(st.v.dtype), st.v)
    token = jnp.where(own, chunk.start * q_tok + pick, st.token)
    count = jnp.where(own, 0, st.count)
    st = st._replace(k=k, v=v, token=token, count=count)
    frames = jnp.where(token >= 0, token // q_tok, -1)
    sink = (token >= 0) & (frames < self.sink_frames)
    trace = {"token": token, "frame": frames, "count": count, "local_end": st.local_end, "sink_shift": st.sink_shift,
             "position": jnp.where(sink, frames + st.sink_shift[..., None], frames)}
    return st, trace

  # ------------------------------------------------------------------------------------------- prompt switches

  default_recache = Recache.WINDOW

  def recache_width(self, geom: Geometry, recache: Recache) -> int:
    """A switch re-runs the last W - F frames (the most the cache holds whole, LongLive's window); the compressed
    tokens of older frames, from anywhere in the video, keep their keys."""
    if recache is not Recache.WINDOW:
      raise ValueError(f"deep_forcing: recache={recache.value!r}; deep_forcing re-caches its window (its compressed "
                       "tokens come from anywhere in the video, so all_memory has no bound), or none")
    return self.window_frames - geom.chunk_frames

  def recache_plan(self, params, st: DeepState, chunk: Chunk, frames: Array, keep_sink: bool):
    """The window's frames re-run at their own frames (Deep Forcing's keys sit at their absolute positions), seeing
    each other only; the sink is frames 0..S-1 for good, so its frames re-run like any other when the window covers
    them (LongLive's global sink changes nothing here)."""
    rerun = frames >= 0
    return st, RecachePlan(frames, rerun, rerun, None)

  def recache_store(self, params, st: DeepState, plan: RecachePlan, kv, chunk: Chunk, keep_sink: bool):
    """Every slot, in every layer and sample, holding a token of a re-run frame takes that token's new key (rotated
    at its frame, a sink token turned further by the layer's sink shift, as the cache keeps it) and value; counts,
    the recent queries and the sink bookkeeping stay."""
    q_tok = chunk.grid[0] * chunk.grid[1]
    l, b, w = kv.k.shape[:3]
    n, h = kv.k.shape[-2:]
    cos, sin = rope_cos_sin(jnp.maximum(plan.frames, 0), chunk.grid, h)  # [W, Q, H/2]
    k_new = jnp.moveaxis(apply_rope(kv.k, cos, sin).reshape(l, b, w * q_tok, n, h), 2, 3)  # [L, B, N, WQ, H]
    v_new = jnp.moveaxis(kv.v.reshape(l, b, w * q_tok, n, h), 2, 3)
    frame = jnp.where(st.token >= 0, st.token // q_tok, -1)  # [L, B, T]
    idx = frame - (chunk.start - w)  # the call's frames are c - W .. c - 1 (`recache_frames`)
    hit = (frame >= 0) & (idx >= 0) & (idx < w)
    hit &= jnp.take(plan.keys, jnp.clip(idx, 0, w - 1)) & (jnp.take(plan.frames, jnp.clip(idx, 0, w - 1)) == frame)
    pick = jnp.clip(idx, 0, w - 1) * q_tok + jnp.where(st.token >= 0, st.token % q_tok, 0)  # [L, B, T]
    k = jnp.take_along_axis(k_new, pick[:, :, None, :, None], axis=3)  # [L, B, N, T, H]
    v = jnp.take_along_axis(v_new, pick[:, :, None, :, None], axis=3)
    sink = hit & (frame < self.sink_frames)
    tc, ts = shift_cos_sin(jnp.clip(st.sink_shift, -MAX_SINK_TURN, MAX_SINK_TURN), h)  # [L, B, H/2]
    k = jnp.where(sink[:, :, None, :, None], rotate(k, tc[:, :, None, None], ts[:, :, None, None]), k)
    put = hit[:, :, None, :, None]
    return st._replace(k=jnp.where(put, k.astype(st.k.dtype), st.k), v=jnp.where(put, v.astype(st.v.dtype), st.v))

  def describe(self, chunk, trace, calls):
    """Per layer (sample 0): the frames whose tokens it holds (frame: tokens held), the top-C tokens chosen in this
    chunk (none when it did not compress), and where the sink sits."""
    t = {k: np.asarray(v) for k, v in trace.items()}
    c = {k: np.asarray(v) for k, v in calls.items()}
    layers = []
    for layer in range(t["frame"].shape[0]):
      fr = t["frame"][layer, 0]
      frames, counts = np.unique(fr[fr >= 0], return_counts=True)
      layers.append({"frames": {str(int(x)): int(n) for x, n in zip(frames, counts)},
                     "compressed": bool(c["compressed"][0, layer, 0]),
                     "top_c_tokens": [int(x) for x in c["selected"][0, layer, 0] if x >= 0],
                     "sink_start": int(t["sink_shift"][layer, 0])})
    return {"layers": layers}
