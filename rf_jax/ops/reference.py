"""The `reference` backend: attention in plain XLA that pays only for the keys it reads (what `auto` runs on CPU and
TPU, and the fallback everywhere).

  chunk part    the chunk's own keys, under no mask, a `BlockCausal` mask or a dense one: logits [B, N, T, S].
  memory part   an online-softmax loop over the valid memory entries only. Entries are compacted (valid first) and
                read `g` whole frames per step straight from the head-major reservoir through the slot table, turned
                by their extra rotation when they have one; the loop runs ceil(count / g) times, so an empty memory
                costs nothing and a half-filled one half. No mask or logits exist for keys that are not read.

Softmax is normalised once at the end (flash style): logits, running maxima, sums and the accumulator are float32.
Queries and keys are multiplied head-major ([B, N, T, H] x [B, N, S, H]), the layout XLA's batched matmuls want, so
the only transposes are of the chunk's own tokens.

Letters: B batch, T query tokens, S chunk keys, R reservoir slots, M memory entries, Q tokens per frame, N heads,
H head dim, g frames per loop step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rf_jax.ops.masks import BlockCausal
from rf_jax.ops.memory import SlotMemory, compact_entries
from rf_jax.ops.oracle import MASKED
from rf_jax.ops.rope import rotate

Array = jax.Array

BLOCK_KEYS = 128  # a loop step reads about this many memory keys or more: max(1, round(BLOCK_KEYS / Q)) frames
QUERY_BLOCK = 4096  # a call with more than twice this many queries (a re-cache) runs them this many at a time


def frames_per_step(frame_tokens: int, entries: int) -> int:
  """g: whole frames the memory loop reads per step (about BLOCK_KEYS keys, at least one frame)."""
  return min(entries, max(1, round(BLOCK_KEYS / frame_tokens)))


def memory_attention(q: Array, k: Array, v: Array, memory: SlotMemory | None = None,
                     mask: BlockCausal | Array | None = None, key_bias: Array | None = None) -> Array:
  """softmax(q K^T / sqrt(H) + key_bias) V over keys [valid memory entries..., chunk keys...].

  q: [B, T, N, H] (RoPE applied); k, v: [B, S, N, H] the chunk's keys and values; memory: see `SlotMemory`; mask
  among the chunk's tokens (None, BlockCausal, or bool broadcastable to [B, N, T, S]); key_bias: float32 [B, S]
  added to the chunk keys' logits. Returns [B, T, N, H] in q's dtype.

  The chunk's own logits are [B, N, T, S]: a call with many more queries than a chunk has (a prompt switch's
  re-cache runs a whole window at once) takes its queries QUERY_BLOCK at a time, so they stay [B, N, QUERY_BLOCK, S].
  """
  if q.shape[1] > 2 * QUERY_BLOCK and not isinstance(mask, BlockCausal):
    return _query_blocks(q, k, v, memory, mask, key_bias)
  return _attend(q, k, v, memory, mask, key_bias)


def _query_blocks(q, k, v, memory, mask, key_bias):
  """`_attend` over QUERY_BLOCK queries at a time (lax.map); the rows of a dense mask go with their queries."""
  b, t, n, h = q.shape
  nb = -(-t // QUERY_BLOCK)
  pad = nb * QUERY_BLOCK - t
  qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0)))
  if mask is not None:
    m = jnp.asarray(mask, bool)
    m = jnp.broadcast_to(m, (*m.shape[:-2], t, m.shape[-1]))  # a query axis of 1 made explicit
    m = jnp.pad(m, [(0, 0)] * (m.ndim - 2) + [(0, pad), (0, 0)], constant_values=True)

  def one(i):
    qb = jax.lax.dynamic_slice_in_dim(qp, i * QUERY_BLOCK, QUERY_BLOCK, axis=1)
    mb = None if mask is None else jax.lax.dynamic_slice_in_dim(m, i * QUERY_BLOCK, QUERY_BLOCK, axis=-2)
    return _attend(qb, k, v, memory, mb, key_bias)

  out = jax.lax.map(one, jnp.arange(nb))  # [nb, B, QUERY_BLOCK, N, H]
  return jnp.moveaxis(out, 0, 1).reshape(b, nb * QUERY_BLOCK, n, h)[:, :t]


def _attend(q: Array, k: Array, v: Array, memory: SlotMemory | None, mask, key_bias: Array | None) -> Array:
  t, h = q.shape[1], q.shape[-1]
  qh = jnp.swapaxes(q * jnp.asarray(h ** -0.5, q.dtype), 1, 2)  # [B, N, T, H], scaled once (not every logit)
  kh, vh = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # [B, N, S, H]
  logits = jnp.einsum("bnth,bnsh->bnts", qh, kh, preferred_element_type=jnp.float32)  # [B, N, T, S]
  if key_bias is not None:
    logits = logits + key_bias[:, None, None, :].astype(jnp.float32)
  if mask is not None:
    dense = mask.dense(t) if isinstance(mask, BlockCausal) else mask
    logits = jnp.where(jnp.asarray(dense, bool), logits, MASKED)
  peak = logits.max(axis=-1)  # [B, N, T]
  p = jnp.exp(logits - peak[..., None])
  carry = (jnp.einsum("bnts,bnsh->bnth", p.astype(vh.dtype), vh, preferred_element_type=jnp.float32),
           peak, p.sum(axis=-1))
  if memory is not None:
    carry = _memory_loop(qh, memory, carry)
  acc, _, total = carry
  return jnp.swapaxes(acc / total[..., None], 1, 2).astype(q.dtype)


def _memory_loop(qh: Array, memory: SlotMemory, carry):
  """Folds the valid memory entries into the online softmax (qh scaled; acc [B, N, T, H], peak and total
  [B, N, T])."""
  b, n, _, h = qh.shape
  q_len, m = memory.frame_tokens, memory.num_entries
  g = frames_per_step(q_len, m)
  count, entry, slot = compact_entries(memory)  # [B], [B, M], [B, M]
  masked = g > 1 or b > 1  # a step may hold entries past some sample's count

  def step(i, carry):
    acc, peak, total = carry
    rank = i * g + jnp.arange(g, dtype=jnp.int32)  # [g] positions in the compacted table
    keep = rank[None, :] < count[:, None]  # [B, g]
    at = jnp.where(keep, rank[None, :], 0)  # past a sample's count: its first entry again (never invalid data)
    where = jnp.take_along_axis(slot, at, axis=1)  # [B, g]
    kb, vb = _frames(memory.k, memory.layer, where), _frames(memory.v, memory.layer, where)  # [B, N, g, Q, H]
    if masked:
      vb = jnp.where(keep[:, None, :, None, None], vb, 0)
    if memory.cos is not None:
      e = jnp.take_along_axis(entry, at, axis=1)[:, :, None, None]  # [B, g, 1, 1]
      cos = jnp.take_along_axis(memory.cos, e, axis=1, mode="clip")[:, None]  # [B, 1, g, Q, H/2]
      sin = jnp.take_along_axis(memory.sin, e, axis=1, mode="clip")[:, None]
      kb = rotate(kb, cos, sin)
    kb = kb.reshape(b, n, g * q_len, h).astype(qh.dtype)
    vb = vb.reshape(b, n, g * q_len, h).astype(qh.dtype)
    logits = jnp.einsum("bnth,bnsh->bnts", qh, kb, preferred_element_type=jnp.float32)  # [B, N, T, g*Q]
    if masked:
      logits = jnp.where(jnp.repeat(keep, q_len, axis=1)[:, None, None, :], logits, MASKED)  # [B, g*Q] keys
    new = jnp.maximum(peak, logits.max(axis=-1))
    alpha = jnp.exp(peak - new)
    p = jnp.exp(logits - new[..., None])
    acc = acc * alpha[..., None] + jnp.einsum("bnts,bnsh->bnth", p.astype(vb.dtype), vb,
                                              preferred_element_type=jnp.float32)
    return acc, new, total * alpha + p.sum(axis=-1)

  steps = (jnp.max(count) + g - 1) // g
  return jax.lax.fori_loop(0, steps, step, carry)


def _frames(a: Array, layer: Array | None, slots: Array) -> Array:
  """Frames `slots` [B, g] of each sample from a reservoir [B, N, R, Q, H] (or layer `layer` of [L, B, N, R, Q,
  H], read in place) -> [B, N, g, Q, H]: one gather of just those frames."""
  rows = jnp.arange(slots.shape[0])[:, None]  # [B, 1]
  got = a[rows, :, slots] if layer is None else a[layer, rows, :, slots]  # [B, g, N, Q, H]
  return jnp.swapaxes(got, 1, 2)
