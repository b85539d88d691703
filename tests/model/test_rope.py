import jax.numpy as jnp
import numpy as np
import pytest

from conftest import fixture_dir
from numpy_reference import rope_apply, rope_freqs
from rf_jax.model.rope import MAX_POSITION, apply_rope, rope_angles_table, rope_cos_sin


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
  head_dim = 128
  pos = np.array([0, 1023, 1024, 5000, 40000, MAX_POSITION - 1])
  cos, sin = rope_cos_sin(jnp.asarray(pos), (1, 1), head_dim)  # [P, 1, 64]
  ref = rope_angles_table(head_dim, MAX_POSITION)[pos]  # float64 angles
  # The 22 frame pairs turn with the position; the height/width pairs of the single token sit at angle 0.
  expected = np.where(np.arange(64) < 22, ref, 0.0)
  np.testing.assert_allclose(np.asarray(cos)[:, 0], np.cos(expected), atol=3e-7)
  np.testing.assert_allclose(np.asarray(sin)[:, 0], np.sin(expected), atol=3e-7)
