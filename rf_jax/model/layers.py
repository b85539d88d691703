"""Small layers of the Wan DiT: norms, the tanh-GELU, adaLN modulation, and the sinusoidal time embedding.

The reference computes the time embedding in float64. We stay in float32 (TPUs have no fast float64) and recover
float64 accuracy by splitting t = n + f: the angle n*w for integer n comes from a table built on the host in float64,
the small angle f*w (f in [0, 1)) is exact enough in float32, and the angle-addition formula joins them. The result
is within about 2e-7 of the float64 value, where a plain float32 evaluation is off by up to 4.5e-5 at t ~ 1000.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array

# Integer parts of t covered by the float64 table; larger or negative t fall back to a plain float32 evaluation.
_TIME_TABLE_SIZE = 1025


class RMSNorm(nnx.Module):
  """x * rsqrt(mean(x^2) + eps) in float32, cast back to x's dtype, then times a learned weight (as `WanRMSNorm`)."""

  def __init__(self, dim: int, *, eps: float, param_dtype=jnp.float32):
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((dim,), param_dtype))

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return normed.astype(x.dtype) * self.weight[...].astype(x.dtype)


class LayerNorm(nnx.Module):
  """LayerNorm over the last axis, computed in float32; affine (`norm3`) or not (`norm1`, `norm2`, head)."""

  def __init__(self, dim: int, *, eps: float, affine: bool, param_dtype=jnp.float32):
    self.eps = eps
    self.affine = affine
    if affine:
      self.weight = nnx.Param(jnp.ones((dim,), param_dtype))
      self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))

  def __call__(self, x: Array) -> Array:
    return layer_norm(x, self.eps, (self.weight[...], self.bias[...]) if self.affine else None)


def layer_norm(x: Array, eps: float, affine: tuple[Array, Array] | None = None) -> Array:
  """Float32 LayerNorm; returns float32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  y = (x - mean) * jax.lax.rsqrt(var + eps)
  if affine is not None:
    weight, bias = affine
    y = y * weight.astype(jnp.float32) + bias.astype(jnp.float32)
  return y


def gelu_tanh(x: Array) -> Array:
  return jax.nn.gelu(x, approximate=True)


def modulate(x: Array, shift: Array, scale: Array) -> Array:
  """adaLN: x * (1 + scale) + shift."""
  return x * (1 + scale) + shift


@functools.lru_cache(maxsize=16)
def _time_tables(freq_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  half = freq_dim // 2
  omega = np.power(10000.0, -np.arange(half, dtype=np.float64) / half)  # [half], float64
  angles = np.outer(np.arange(_TIME_TABLE_SIZE, dtype=np.float64), omega)  # [n, half]
  return (np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32), omega.astype(np.float32))


def sinusoidal_embedding(t: Array, freq_dim: int) -> Array:
  """[cos(t*w), sin(t*w)] (cos first) with w_j = 10000^(-j/half), to float64 accuracy; t: [...] -> [..., freq_dim]."""
  cos_n, sin_n, omega = _time_tables(freq_dim)
  t = t.astype(jnp.float32)
  n = jnp.floor(t)
  in_table = (n >= 0) & (n < _TIME_TABLE_SIZE)
  idx = jnp.where(in_table, n, 0).astype(jnp.int32)
  frac_angle = (t - n)[..., None] * omega  # exact split: t - floor(t) is representable; |angle| < 1
  cf, sf = jnp.cos(frac_angle), jnp.sin(frac_angle)
  cn, sn = jnp.asarray(cos_n)[idx], jnp.asarray(sin_n)[idx]
  cos = cn * cf - sn * sf
  sin = sn * cf + cn * sf
  direct = t[..., None] * omega
  cos = jnp.where(in_table[..., None], cos, jnp.cos(direct))
  sin = jnp.where(in_table[..., None], sin, jnp.sin(direct))
  return jnp.concatenate([cos, sin], axis=-1)
