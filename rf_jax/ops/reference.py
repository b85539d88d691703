"""Plain XLA attention: the oracle every other backend is tested against.

Letters: B batch, T query tokens, S chunk keys, R reservoir slots, M memory entries, Q tokens per frame, N heads,
H head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rf_jax.ops.masks import BlockCausal
from rf_jax.ops.memory import SlotMemory
from rf_jax.ops.rope import apply_rope

Array = jax.Array

_MASKED = -1e30  # finite, so a row with every key masked gives a uniform average rather than NaN


def reference_attention(q: Array, k: Array, v: Array, mask: Array | None = None) -> Array:
  """softmax(q k^T / sqrt(H)) v with logits and softmax in float32.

  q: [B, T, N, H]; k, v: [B, S, N, H]; mask: bool, broadcastable to [B, N, T, S] (True = may attend).
  Returns [B, T, N, H] in q's dtype.
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("BTNH,BSNH->BNTS", q, k, preferred_element_type=jnp.float32) * scale  # [B, N, T, S]
  if mask is not None:
    logits = jnp.where(mask, logits, _MASKED)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("BNTS,BSNH->BTNH", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out.astype(q.dtype)


def gather_memory(memory: SlotMemory, dtype) -> tuple[Array, Array]:
  """The memory's keys rotated to their positions and its values, as dense keys: [B, M*Q, N, H] each, in `dtype`."""
  k, v = memory.k, memory.v
  if memory.slots is not None:
    idx = memory.slots.astype(jnp.int32)[:, :, None, None, None]  # [B, M, 1, 1, 1]
    k = jnp.take_along_axis(k, idx, axis=1, mode="clip")  # [B, M, Q, N, H]
    v = jnp.take_along_axis(v, idx, axis=1, mode="clip")
  k = k.astype(dtype) if memory.cos is None else apply_rope(k.astype(dtype), memory.cos, memory.sin)
  b, m, q_len, n, h = k.shape
  return k.reshape(b, m * q_len, n, h), v.astype(dtype).reshape(b, m * q_len, n, h)


def dense_mask(memory: SlotMemory | None, mask, batch: int, num_queries: int, num_keys: int) -> Array | None:
  """bool [B, 1, T, M*Q + S] (or None) over keys [memory entries..., chunk keys...]."""
  if isinstance(mask, BlockCausal):
    mask = mask.dense(num_queries)
  if memory is None:
    return None if mask is None else jnp.asarray(mask, bool)
  chunk = jnp.ones((num_queries, num_keys), bool) if mask is None else jnp.asarray(mask, bool)
  chunk = jnp.broadcast_to(chunk, (batch, 1, num_queries, num_keys))
  q_len = memory.k.shape[2]
  slots = jnp.repeat(memory.valid.astype(bool), q_len, axis=1)  # [B, M*Q]
  slots = jnp.broadcast_to(slots[:, None, None, :], (batch, 1, num_queries, slots.shape[1]))
  return jnp.concatenate([slots, chunk], axis=-1)


def rotate_memory(memory: SlotMemory, dtype) -> SlotMemory:
  """The memory with its entries gathered and rotated by XLA: M contiguous, already-rotated slots."""
  k, v = gather_memory(memory, dtype)
  b, m = memory.valid.shape
  shape = (b, m, memory.k.shape[2], *memory.k.shape[3:])
  return SlotMemory(k.reshape(shape), v.reshape(shape), None, memory.valid, None, None)


def reference_memory_attention(q: Array, k: Array, v: Array, memory: SlotMemory | None, mask) -> Array:
  """Attention of the chunk's queries to [memory entries..., chunk keys...]; see `rf_jax.ops.attention`."""
  full_mask = dense_mask(memory, mask, q.shape[0], q.shape[1], k.shape[1])
  if memory is not None:
    mk, mv = gather_memory(memory, k.dtype)
    k, v = jnp.concatenate([mk, k], axis=1), jnp.concatenate([mv, v], axis=1)
  return reference_attention(q, k, v, full_mask)
