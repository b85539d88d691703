"""The demo-model path: `rf-jax generate` with no model given loads rf_jax/assets/demo (safetensors + demo.json,
nothing unpickled) and writes the pixel-space video, its memory trace and a motion plot. Here the demo folder is a
small random model written by `demo.write_demo` (the same writer scripts/make_demo.py uses)."""

import json
import os

import numpy as np
import pytest
from flax import nnx

from rf_jax import cli, demo
from rf_jax.config import ModelConfig
from rf_jax.model import CausalWanDiT
from rf_jax.video import probe

CFG = ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=3, out_dim=3, freq_dim=16, text_dim=8,
                  text_len=2, patch_size=(1, 4, 4))


@pytest.fixture
def demo_dir(tmp_path, monkeypatch):
  model = CausalWanDiT(CFG, rngs=nnx.Rngs(0))
  folder = str(tmp_path / "demo")
  demo.write_demo(folder, CFG, nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                  {"sampler": {"steps": [1000, 500], "shift": 3.0, "eta": 0.0}, "frame_hw": [16, 16],
                   "default_frames": 12, "fps": 16})
  monkeypatch.setattr(demo, "ASSET_DIR", folder)
  return folder, model


def test_generate_without_a_model_writes_the_demo_video(demo_dir, tmp_path):
  folder, model = demo_dir
  loaded, info = demo.load_demo()
  for (p, a), (_, b) in zip(nnx.to_flat_state(nnx.state(loaded, nnx.Param)),
                            nnx.to_flat_state(nnx.state(model, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]))
  out = tmp_path / "v"
  assert cli.main(["generate", "--out", str(out), "--batch", "2", "--quiet"]) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["source"]["demo"] == folder and summary["sampler"]["eta"] == 0.0
  assert summary["sampler"]["shift"] == 3.0 and len(summary["sampler"]["timesteps"]) == 2
  assert summary["video"]["files"] == ["video_000.mp4", "video_001.mp4"]
  info = probe(str(out / "video_001.mp4"))
  assert (info["frames"], info["height"], info["width"]) == (12, 128, 128)  # 16x16 pixel frames shown 8x
  latents = np.load(out / "latents.npy")  # the frames themselves, [B, F, 3, H, W]
  assert latents.shape == (2, 12, 3, 16, 16)
  motion = json.loads((out / "motion.json").read_text())["samples"]["0"]
  assert len(motion["motion"]) == 11 and len(motion["consistency"]) == 11
  frames = np.rint((np.clip(np.moveaxis(latents[0], 1, -1), -1, 1) + 1) * 127.5)
  np.testing.assert_allclose(motion["motion"][0], np.abs(frames[1] - frames[0]).mean() / 255, rtol=1e-5)
  assert os.path.exists(out / "motion.png") and os.path.exists(out / "memory_trace.json")


def test_the_demo_runs_with_its_own_memory_unless_told_otherwise(tmp_path, monkeypatch):
  from rf_jax.memory import RelaxPolicy, WindowPolicy, policy_to_dict
  model = CausalWanDiT(CFG, rngs=nnx.Rngs(0))
  folder = str(tmp_path / "demo")
  demo.write_demo(folder, CFG, nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                  {"sampler": {"steps": [1000], "shift": 3.0, "eta": 0.0}, "frame_hw": [16, 16],
                   "default_frames": 9, "fps": 16, "memory": {"policy": "window", "window_frames": 6,
                                                             "sink_frames": 3}})
  monkeypatch.setattr(demo, "ASSET_DIR", folder)
  for i, (argv, want) in enumerate([
      ([], WindowPolicy(window_frames=6, sink_frames=3)),  # demo.json's memory
      (["--sink-frames", "0"], WindowPolicy(window_frames=6)),  # a flag overrides one of its settings
      (["--memory", "relax"], RelaxPolicy())]):  # --memory: that policy's own defaults
    out = tmp_path / f"v{i}"
    assert cli.main(["generate", "--out", str(out), "--quiet", "--no-video", *argv]) == 0
    assert json.loads((out / "summary.json").read_text())["policy"] == json.loads(json.dumps(policy_to_dict(want)))


def test_the_demo_takes_no_prompt_and_a_missing_demo_is_named(demo_dir, tmp_path, capsys, monkeypatch):
  assert cli.main(["generate", "--out", str(tmp_path / "v"), "--prompt", "a fox", "--quiet"]) == 2
  assert "unconditional" in capsys.readouterr().err
  monkeypatch.setattr(demo, "ASSET_DIR", str(tmp_path / "nowhere"))
  assert cli.main(["generate", "--out", str(tmp_path / "v"), "--quiet"]) == 2
  assert "the demo model is not installed" in capsys.readouterr().err


# The shipped model against the dataset over a whole 30-second video: its first second and its last 5 seconds.
# Measured (demo.rollout_check, CPU, jax 0.12.0.1): first second motion 0.96 and shape pixels 0.76 of the dataset's,
# consistency 0.39; last 5 s 1.28, 1.12 and 0.43 (the dataset's consistency: 0.86). The floors sit below; a model
# whose frames fade to the background, or whose colours are not frame 0's, scores near 0 on the last two, and one
# that floods the frame with colour goes over the ceiling. A 30-s rollout is chaotic: rounding-level differences (a
# CPU model, an equivalent rewrite of attention) move the last 5 s's consistency of these 4 seeds between 0.21 and
# 0.43 (commit 3c6f66a: 0.43 on an AMD EPYC, 0.21 on an Intel Xeon; 7ac44fa on the Xeon: 0.42, and 0.37 with seed
# 1), so its floor is 0.15.
MOTION_FLOOR = 0.5  # fraction of the dataset's motion
FOREGROUND_FLOOR, FOREGROUND_CEILING = 0.4, 2.5  # fraction of the dataset's shape pixels
CONSISTENCY_FLOOR = {"first_second": 0.25, "last": 0.15}  # of frame 0's shape colours still present (shape_curves)


def test_the_shipped_demo_moves_and_keeps_its_shapes_for_30_seconds():
  """Its own rollouts under its memory (demo.json: what `rf-jax generate` runs) and its fitted sampler, 4 seeds of
  480 frames, against 4 dataset clips: frames 3-15 and the last 80. The demo is part of the package: missing, it
  fails."""
  assert demo.available(), f"the shipped demo model is missing from {demo.ASSET_DIR}"
  model, info = demo.load_demo()
  check = demo.rollout_check(model, info, frames=480, samples=4, seed=0, last=80)
  for span in ("first_second", "last"):
    got = check[span]
    assert got["motion_vs_data"] >= MOTION_FLOOR, (span, got)
    assert FOREGROUND_FLOOR <= got["foreground_vs_data"] <= FOREGROUND_CEILING, (span, got)
    assert got["consistency"] >= CONSISTENCY_FLOOR[span], (span, got)
