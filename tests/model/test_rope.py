import jax.numpy as jnp
import numpy as np
import pytest

from conftest import fixture_dir
from numpy_reference import rope_apply, rope_freqs
from rf_jax.model.rope import MAX_POSITION, apply_rope, rope_angles_table, rope_cos_sin, shift_cos_sin


@pytest.mark.parametrize("name", ["A", "C"])
def test_rope_matches_fixture(name):
  z = np.load(f"{fixture_dir(name)}/rope.npz")
  x = z["x"]
  f, hp, wp = z["grid_sizes"][0]
  hd = x.shape[-1]
  angles = rope_angles_table(hd)
  np.testing.assert_allclose(np.cos(angles), z["freqs_real"], rtol=0, atol=1e-15)
  np.testing.assert_allclose(np.sin(angles), z["freqs_imag"], rtol=0, atol=1e-15)
  xf = jnp.asarray(x).reshape(1, f, hp * wp, *x.shape[2:])
  for start in (0, 7):
    cos, sin = rope_cos_sin(jnp.arange(start, start + f), (int(hp), int(wp)), hd)
    out = np.asarray(apply_rope(xf, cos, sin)).reshape(x.shape)
    ref = z[f"out_start{start}"]
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-6


@pytest.mark.parametrize("head_dim", [8, 12, 20, 24, 128])
def test_rope_matches_float64_formula_for_odd_splits(head_dim):
  rng = np.random.default_rng(head_dim)
  x = rng.normal(size=(1, 2 * 3 * 5, 2, head_dim))
  ref = rope_apply(x, (2, 3, 5), rope_freqs(head_dim), start_frame=900)
  cos, sin = rope_cos_sin(jnp.arange(900, 902), (3, 5), head_dim)
  out = apply_rope(jnp.asarray(x, jnp.float32).reshape(1, 2, 15, 2, head_dim), cos, sin)
  np.testing.assert_allclose(np.asarray(out).reshape(x.shape), ref, atol=2e-6)


def test_frame_positions_beyond_the_reference_table_are_exact():
  """Three-level tables: any position up to 2^30 (and its negative, for memory shifts) to float32 rounding of the
  float64 angle, and the shift rotation leaves the height/width pairs alone."""
  head_dim = 128
  pos = np.array([0, 1023, 1024, 5000, 40000, 65536, 10**6 + 7, MAX_POSITION - 1])
  inv = 10000.0 ** (-np.arange(0, 44, 2, dtype=np.float64) / 44)  # the 22 frame pairs of head dim 128
  for sign in (1, -1):
    cos, sin = rope_cos_sin(jnp.asarray(sign * pos), (1, 1), head_dim)  # [P, 1, 64]
    angles = sign * pos[:, None].astype(np.float64) * inv  # [P, 22]
    expected = np.concatenate([angles, np.zeros((len(pos), 42))], axis=1)  # one token: spatial angle 0
    if sign == 1:
      np.testing.assert_allclose(np.asarray(cos)[:, 0], np.cos(expected), atol=5e-7)
    np.testing.assert_allclose(np.asarray(sin)[:, 0, :22], np.sin(angles), atol=5e-7)
    shift_cos, shift_sin = shift_cos_sin(jnp.asarray(sign * pos), head_dim)  # [P, 64]
    np.testing.assert_allclose(np.asarray(shift_cos)[:, :22], np.cos(angles), atol=5e-7)
    np.testing.assert_allclose(np.asarray(shift_sin)[:, :22], np.sin(angles), atol=5e-7)
    assert np.all(np.asarray(shift_cos)[:, 22:] == 1) and np.all(np.asarray(shift_sin)[:, 22:] == 0)
