"""Dense attention over every key: the oracle every backend is tested against, and the kernels' backward pass.

It gathers the memory's entries into one token-major copy, rotates them, concatenates them with the chunk's keys and
materialises the logits over all of them, masking invalid entries. Simple, and wasteful on purpose: nothing here is
on a rollout's hot path (that is `rf_jax.ops.reference`).

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

MASKED = -1e30  # finite, so a row with every key masked gives a uniform average rather than NaN


def dense_attention(q: Array, k: Array, v: Array, mask: Array | None = None, key_bias: Array | None = None) -> Array:
  """softmax(q k^T / sqrt(H) + key_bias) v with logits and softmax in float32.

  q: [B, T, N, H]; k, v: [B, S, N, H]; mask: bool, broadcastable to [B, N, T, S] (True = may attend); key_bias:
  float32 [B, S] added to every query's logits. Returns [B, T, N, H] in q's dtype.
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("BTNH,BSNH->BNTS", q, k, preferred_element_type=jnp.float32) * scale  # [B, N, T, S]
  if key_bias is not None:
    logits = logits + key_bias[:, None, None, :]
  if mask is not None:
    logits = jnp.where(mask, logits, MASKED)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum("BNTS,BSNH->BTNH", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return out.astype(q.dtype)


def gather_memory(memory: SlotMemory, dtype) -> tuple[Array, Array]:
  """The memory's entries turned by their extra rotation, token-major: keys, values [B, M*Q, N, H] in `dtype`."""
  memory = memory.of_layer()
  k, v = memory.k, memory.v  # [B, N, R, Q, H]
  if memory.slots is not None:
    idx = memory.slots.astype(jnp.int32)[:, None, :, None, None]  # [B, 1, M, 1, 1]
    k = jnp.take_along_axis(k, idx, axis=2, mode="clip")  # [B, N, M, Q, H]
    v = jnp.take_along_axis(v, idx, axis=2, mode="clip")
  k, v = jnp.moveaxis(k, 1, 3), jnp.moveaxis(v, 1, 3)  # [B, M, Q, N, H]
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
  slots = jnp.repeat(memory.valid.astype(bool), memory.frame_tokens, axis=1)  # [B, M*Q]
  slots = jnp.broadcast_to(slots[:, None, None, :], (batch, 1, num_queries, slots.shape[1]))
  return jnp.concatenate([slots, chunk], axis=-1)


def dense_memory_attention(q: Array, k: Array, v: Array, memory: SlotMemory | None, mask,
                           key_bias: Array | None = None) -> Array:
  """Attention of the chunk's queries to [memory entries..., chunk keys...]; see `rf_jax.ops.attention`."""
  full_mask = dense_mask(memory, mask, q.shape[0], q.shape[1], k.shape[1])
  if memory is not None:
    mk, mv = gather_memory(memory, k.dtype)
    k, v = jnp.concatenate([mk, k], axis=1), jnp.concatenate([mv, v], axis=1)
    if key_bias is not None:
      key_bias = jnp.concatenate([jnp.zeros(mk.shape[:2], jnp.float32), key_bias], axis=1)
  return dense_attention(q, k, v, full_mask, key_bias)
