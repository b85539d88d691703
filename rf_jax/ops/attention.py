"""The one dispatch point for attention backends.

Every attention in the package goes through `attention(...)`. Backends are an enum; kernels live in
`rf_jax.kernels` and are imported lazily by the branch that needs them.
"""

from __future__ import annotations

import enum

import jax

from rf_jax.ops.reference import reference_attention

Array = jax.Array


class AttnImpl(enum.Enum):
  REFERENCE = "reference"  # plain XLA einsum + softmax (materialises the logits)


def attention(q: Array, k: Array, v: Array, mask: Array | None = None, *,
              impl: AttnImpl = AttnImpl.REFERENCE) -> Array:
  """Scaled dot-product attention. q: [B, T, N, H]; k, v: [B, S, N, H]; mask: bool broadcastable to [B, N, T, S]."""
  match impl:
    case AttnImpl.REFERENCE:
      return reference_attention(q, k, v, mask)
    case _:
      raise ValueError(f"unknown attention backend {impl!r}")
