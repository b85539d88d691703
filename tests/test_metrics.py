"""Weight-free video metrics against independent formulas and videos whose answer is known by construction."""

import numpy as np
import pytest

from rf_jax.metrics import NAMES, lucas_kanade, video_metrics


def pattern(h, w, dx=0.0, dy=0.0):
  """A smooth texture shifted by (dx, dy) pixels."""
  y, x = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
  x, y = x - dx, y - dy
  return np.sin(0.45 * x + 0.2 * y) + np.cos(0.3 * y - 0.15 * x) + 0.5 * np.sin(0.25 * (x + y))


def test_lucas_kanade_recovers_a_known_shift():
  a, b = pattern(48, 64), pattern(48, 64, dx=0.4, dy=-0.25)
  u, v = lucas_kanade(np.float32(a), np.float32(b), radius=3)
  inner = (slice(6, -6), slice(6, -6))
  assert abs(float(np.median(np.asarray(u)[inner])) - 0.4) < 0.03
  assert abs(float(np.median(np.asarray(v)[inner])) + 0.25) < 0.03


def test_static_video():
  rng = np.random.default_rng(0)
  frame = rng.normal(size=(1, 1, 16, 16, 4)).astype(np.float32)
  m = video_metrics(np.repeat(frame, 8, axis=1))
  assert set(m) == set(NAMES)
  assert float(m["motion_energy"][0]) == 0.0 and float(m["flow_magnitude"][0]) == 0.0
  assert float(m["dynamic_degree"][0]) == 0.0 and float(m["drift"][0]) == 0.0
  np.testing.assert_allclose(m["first_frame_consistency"], 1.0, rtol=1e-6)
  np.testing.assert_allclose(m["previous_frame_consistency"], 1.0, rtol=1e-6)


def test_against_numpy_formulas():
  rng = np.random.default_rng(1)
  v = rng.normal(size=(3, 9, 8, 10, 4)).astype(np.float32)
  v[1] += np.linspace(0, 3, 9)[:, None, None, None]  # sample 1 drifts upward
  m = {k: np.asarray(x) for k, x in video_metrics(v).items()}
  x = v.astype(np.float64)
  np.testing.assert_allclose(m["motion_energy"], ((x[:, 1:] - x[:, :-1]) ** 2).mean(axis=(1, 2, 3, 4)), rtol=1e-5)

  def corr(a, b):
    a = a.reshape(-1) - a.mean()
    b = b.reshape(-1) - b.mean()
    return a @ b / np.sqrt((a @ a) * (b @ b))

  first = [np.mean([corr(x[i, t], x[i, 0]) for t in range(1, 9)]) for i in range(3)]
  prev = [np.mean([corr(x[i, t], x[i, t - 1]) for t in range(1, 9)]) for i in range(3)]
  np.testing.assert_allclose(m["first_frame_consistency"], first, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(m["previous_frame_consistency"], prev, rtol=1e-4, atol=1e-6)
  q = 2
  m0, s0 = x[:, :q].mean(axis=(1, 2, 3)), x[:, :q].std(axis=(1, 2, 3))
  m1, s1 = x[:, -q:].mean(axis=(1, 2, 3)), x[:, -q:].std(axis=(1, 2, 3))
  drift = np.sqrt(((m1 - m0) ** 2 + (s1 - s0) ** 2).mean(-1)) / np.sqrt((s0 ** 2).mean(-1))
  np.testing.assert_allclose(m["drift"], drift, rtol=1e-4)
  assert m["drift"][1] > 5 * m["drift"][0]


def test_dynamic_degree_of_a_moving_and_a_still_texture():
  h, w = 32, 32  # threshold 6 * 32 / 256 = 0.75 px per frame
  moving = np.stack([pattern(h, w, dx=1.0 * t) for t in range(6)])
  still = np.stack([pattern(h, w, dx=0.1 * t) for t in range(6)])
  video = np.stack([moving, still])[..., None].astype(np.float32)
  m = video_metrics(video)
  assert float(m["dynamic_degree"][0]) == 1.0 and float(m["dynamic_degree"][1]) == 0.0
  assert float(m["flow_magnitude"][0]) > 5 * float(m["flow_magnitude"][1])


def test_bad_shape_is_named():
  with pytest.raises(ValueError, match=r"expected \[B, T >= 2, H, W, C\]"):
    video_metrics(np.zeros((1, 1, 4, 4, 3), np.float32))
