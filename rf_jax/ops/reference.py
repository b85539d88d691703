"""Plain XLA attention: the oracle every other backend is tested against.

Letters: B batch, T query tokens, S key tokens, N heads, H head dim.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

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
