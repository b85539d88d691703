import jax.numpy as jnp
import numpy as np

from rf_jax.model.layers import sinusoidal_embedding


def _float64_sinusoid(t, freq_dim):
  half = freq_dim // 2
  ang = np.outer(np.asarray(t, np.float64), np.power(10000.0, -np.arange(half) / half))
  return np.concatenate([np.cos(ang), np.sin(ang)], axis=1)


def test_time_embedding_reaches_float64_accuracy():
  rng = np.random.default_rng(0)
  t = np.concatenate([np.array([0, 3, 4.98, 625, 833.3333, 937.5, 999, 1000]),
                      rng.uniform(0, 1000, 500)]).astype(np.float32)
  ours = np.asarray(sinusoidal_embedding(jnp.asarray(t), 256))
  ref = _float64_sinusoid(t, 256)
  assert np.abs(ours - ref).max() < 5e-7  # a plain float32 evaluation is off by ~4.5e-5 near t = 1000
  naive = np.concatenate([np.cos(np.outer(t, np.power(10000.0, -np.arange(128) / 128).astype(np.float32))),
                          np.sin(np.outer(t, np.power(10000.0, -np.arange(128) / 128).astype(np.float32)))], 1)
  assert np.abs(naive - ref).max() > 1e-5  # the check above can tell the difference


def test_time_embedding_outside_the_table_falls_back():
  t = np.array([-2.5, 1500.25], np.float32)
  ours = np.asarray(sinusoidal_embedding(jnp.asarray(t), 32))
  np.testing.assert_allclose(ours, _float64_sinusoid(t, 32), atol=1e-4)
