"""The bouncing-shapes dataset: deterministic, in range, moving, shapes that keep their identity."""

import numpy as np
import pytest

from rf_jax.data.shapes import ShapesConfig, _trajectory, shapes_batch, shapes_clip


def test_same_seed_and_index_same_clip_else_different():
  cfg = ShapesConfig()
  a = shapes_clip(cfg, seed=3, index=5)
  np.testing.assert_array_equal(a, shapes_clip(cfg, seed=3, index=5))
  assert not np.array_equal(a, shapes_clip(cfg, seed=3, index=6))
  assert not np.array_equal(a, shapes_clip(cfg, seed=4, index=5))
  assert a.shape == (48, 32, 32, 3) and a.dtype == np.float32 and a.min() >= -1 and a.max() <= 1
  # a later window of the same endless clip continues it exactly
  np.testing.assert_allclose(shapes_clip(cfg, seed=3, index=5, start_frame=10, frames=5), a[10:15], atol=1e-6)


def test_clips_move_and_keep_their_colours():
  clips = shapes_batch(ShapesConfig(), seed=0, indices=range(16))
  motion = np.abs(np.diff(clips, axis=1)).mean(axis=(1, 2, 3, 4))
  assert motion.min() > 0.005  # every clip moves
  # identity persists: the palette colours fully covering some pixel are the same in the first and last frame
  from rf_jax.data.shapes import PALETTE
  colours = PALETTE * 2 - 1

  def present(frame):
    px = frame.reshape(-1, 1, 3)
    return {int(k) for k in np.nonzero((np.abs(px - colours[None]).max(-1) < 1e-5).sum(0) >= 3)[0]}
  same = [bool(present(c[0])) and present(c[0]) == present(c[-1]) for c in clips]
  assert sum(same) >= 14, same  # (a shape may be hidden behind another in one of the two frames)


def test_bounces_stay_inside_and_reflect():
  t = np.arange(200, dtype=np.float64)
  x = _trajectory(5.0, 1.3, 3.0, 29.0, t)
  assert x.min() >= 3.0 and x.max() <= 29.0
  steps = np.abs(np.diff(x))
  assert steps.max() <= 1.3 + 1e-9 and np.isclose(steps, 1.3).mean() > 0.8  # full speed except across a wall
  assert (np.diff(np.sign(np.diff(x))) != 0).sum() >= 8  # it turns at the walls


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="radius"):
    ShapesConfig(size=16, radius=(2.0, 9.0))


def test_shape_curves_hold_on_the_dataset_and_fall_when_shapes_fade_vanish_or_change_colour():
  from rf_jax.data.shapes import shape_curves
  cfg = ShapesConfig(frames=24)
  clips = np.stack([shapes_clip(cfg, seed=4, index=i) for i in range(4)])
  c = shape_curves(clips)
  assert c["motion"].shape == (4, 23) and c["foreground"].shape == c["consistency"].shape == (4, 24)
  np.testing.assert_allclose(c["consistency"][:, 0], 1.0)
  assert c["consistency"].mean() > 0.85 and c["motion"].min() > 0
  bg = np.asarray(cfg.background, np.float32) * 2 - 1
  gone = clips.copy()
  gone[:, 12:] = bg  # the shapes vanish half-way
  g = shape_curves(gone)
  assert np.all(g["consistency"][:, 12:] == 0) and np.all(g["foreground"][:, 12:] == 0)
  assert np.all(g["motion"][:, 12:] == 0)
  faded = clips.copy()
  faded[:, 12:] = bg + 0.3 * (clips[:, 12:] - bg)  # 70% towards the background
  assert shape_curves(faded)["consistency"][:, 12:].mean() < 0.2
  recoloured = clips.copy()
  recoloured[:, 12:] = clips[:, 12:, :, :, [1, 2, 0]]  # RGB -> GBR: same shapes, other colours (white stays)
  assert shape_curves(recoloured)["consistency"][:, 12:].mean() < 0.6


def test_a_backdrop_changes_the_background_and_nothing_else():
  from rf_jax.data.shapes import BACKDROPS
  cfg = ShapesConfig(frames=6)
  default = shapes_clip(cfg, seed=2, index=3)
  np.testing.assert_array_equal(shapes_clip(cfg, seed=2, index=3, background=BACKDROPS["black"]), default)
  red = shapes_clip(cfg, seed=2, index=3, background=BACKDROPS["red"])
  bg_black = np.asarray(BACKDROPS["black"], np.float32) * 2 - 1
  bg_red = np.asarray(BACKDROPS["red"], np.float32) * 2 - 1
  empty = np.all(np.abs(default - bg_black) < 1e-6, axis=-1)  # pixels no shape touches
  assert 0.3 < empty.mean() < 1
  np.testing.assert_allclose(red[empty], np.broadcast_to(bg_red, red[empty].shape), atol=1e-6)
  covered = ~empty & (np.abs(default - red).max(-1) < 1e-6)  # pixels fully covered by a shape: identical
  assert covered.any()
  # the per-frame background of shape_curves: measured against its own backdrop, both clips have the same shapes
  both = np.stack([default, red])
  per_frame = np.stack([np.broadcast_to(BACKDROPS["black"], (6, 3)), np.broadcast_to(BACKDROPS["red"], (6, 3))])
  from rf_jax.data.shapes import shape_curves
  c = shape_curves(both, per_frame)
  np.testing.assert_allclose(c["foreground"][0], c["foreground"][1], atol=0.02)
