"""mp4 writing through the imageio-ffmpeg binary, read back by decoding."""

import numpy as np
import pytest

from rf_jax.video import Mp4Writer, probe, to_uint8


def test_pixels_map_to_bytes_as_wan_saves_them():
  x = np.array([-3.0, -1.0, 0.0, 0.5, 1.0, 7.0], np.float32)
  np.testing.assert_array_equal(to_uint8(x), np.rint((np.clip(x, -1, 1) + 1) / 2 * 255).astype(np.uint8))
  assert to_uint8(x).tolist() == [0, 0, 128, 191, 255, 255]


def test_streamed_frames_make_a_playable_h264_file(tmp_path):
  rng = np.random.default_rng(0)
  smooth = np.linspace(0, 255, 40 * 56 * 3).reshape(40, 56, 3)
  frames = [np.clip(smooth + 10 * t, 0, 255).astype(np.uint8)[None] for t in range(9)]
  path = str(tmp_path / "a.mp4")
  with Mp4Writer(path, height=40, width=56, fps=16) as w:
    w.write(frames[0])  # the first chunk (1 frame), then 8 more in two writes
    w.write(np.concatenate(frames[1:5]))
    w.write(np.concatenate(frames[5:]))
  info = probe(path)
  assert (info["frames"], info["height"], info["width"], info["fps"], info["codec"]) == (9, 40, 56, 16.0, "h264")
  assert np.abs(info["first_frame"].astype(int) - frames[0][0]).mean() < 2  # lossy, but close
  with pytest.raises(ValueError, match=r"expected uint8 \[T, 40, 56, 3\]"):
    with Mp4Writer(str(tmp_path / "b.mp4"), height=40, width=56) as w:
      w.write(rng.random((2, 40, 56, 3)))


def test_odd_sizes_are_padded_to_even(tmp_path):
  path = str(tmp_path / "odd.mp4")
  with Mp4Writer(path, height=9, width=13) as w:
    w.write(np.zeros((3, 9, 13, 3), np.uint8))
  info = probe(path)
  assert (info["frames"], info["height"], info["width"]) == (3, 10, 14)


def test_probe_refuses_what_is_not_a_video(tmp_path):
  bad = tmp_path / "x.mp4"
  bad.write_bytes(b"not a video")
  with pytest.raises(ValueError, match="not a readable video"):
    probe(str(bad))
