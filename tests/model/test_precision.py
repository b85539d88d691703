"""bf16 compute against float32: the error is small and bounded (numbers quoted in the README)."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rf_jax.config import TINY
from rf_jax.model import CausalWanDiT


def _forward(dtype):
  model = CausalWanDiT(TINY, dtype=dtype, rngs=nnx.Rngs(0))
  kx, kc = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (2, 6, 8, 8, 16))
  ctx = jax.random.normal(kc, (2, TINY.text_len, TINY.text_dim))
  t = jnp.array([[1000, 937.5, 833.3, 625, 250, 0]] * 2, jnp.float32)
  return np.asarray(model.forward_train(x, t, ctx), np.float64)


def test_bf16_compute_error_against_float32():
  with jax.default_matmul_precision("highest"):
    ref = _forward(jnp.float32)
    bf16 = _forward(jnp.bfloat16)
  rel = np.linalg.norm(bf16 - ref) / np.linalg.norm(ref)
  assert 1e-4 < rel < 2e-2  # bf16 really is used, and stays close
