"""The rotation RoPE applies: interleaved pairs (2j, 2j+1) of the head dim turned by per-token angles."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def rotate(x: Array, cos: Array, sin: Array) -> Array:
  """Turns the interleaved pairs of x [..., H] by angles whose cos/sin [..., H/2] broadcast against x's leading
  axes. Computed in float32 and cast back to x's dtype."""
  xf = x.astype(jnp.float32).reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
  a, b = xf[..., 0], xf[..., 1]  # [..., c]
  out = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
  """Token-major RoPE: x [..., Q, N, H], cos/sin [..., Q, H/2] (broadcast over heads N) -> like x."""
  return rotate(x, cos[..., None, :], sin[..., None, :])
