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


def random_demo(folder: str, seed: int, **info) -> CausalWanDiT:
  """Writes a demo folder of a random CFG model (`demo.write_demo`): a 2-step sampler, 16x16 frames, 12 frames by
  default; `info` adds to demo.json or replaces its entries."""
  model = CausalWanDiT(CFG, rngs=nnx.Rngs(seed))
  demo.write_demo(folder, CFG, nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                  {"sampler": {"steps": [1000, 500], "shift": 3.0, "eta": 0.0}, "frame_hw": [16, 16],
                   "default_frames": 12, "fps": 16, **info})
  return model


@pytest.fixture
def demo_dir(tmp_path, monkeypatch):
  folder = str(tmp_path / "demo")
  model = random_demo(folder, 0)
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
  folder = str(tmp_path / "demo")
  random_demo(folder, 0, sampler={"steps": [1000], "shift": 3.0, "eta": 0.0}, default_frames=9,
              memory={"policy": "window", "window_frames": 6, "sink_frames": 3})
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


@pytest.fixture
def backdrop_dir(tmp_path, monkeypatch):
  """A small random conditional demo (demo.json with prompts and a default prompt) as --demo backdrop."""
  from rf_jax.text.words import WordEncoder
  folder = str(tmp_path / "demo_backdrop")
  random_demo(folder, 1, memory={"policy": "window", "window_frames": 6},
              prompts=WordEncoder.fixed(("black", "blue", "red"), CFG.text_dim).to_dict(), default_prompt="black")
  monkeypatch.setattr(demo, "BACKDROP_DIR", folder)
  return folder


def test_the_backdrop_demo_reads_one_word_prompts_and_switches(backdrop_dir, tmp_path, capsys):
  """--demo backdrop: the default prompt without --prompt; --prompt WORD --switch FRAME:WORD re-caches at the switch
  (the window's default) and shows it in the trace; the run equals a Rollout fed the words' vectors by hand."""
  import jax.numpy as jnp
  from rf_jax.memory import WindowPolicy
  from rf_jax.sampling import PromptSchedule, Rollout, Sampler
  from rf_jax.sampling.seeds import seed_keys
  from rf_jax.text.words import WordEncoder
  out = tmp_path / "plain"
  assert cli.main(["generate", "--demo", "backdrop", "--out", str(out), "--quiet"]) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["source"]["demo"] == backdrop_dir and summary["prompts"] == ["black"]
  out = tmp_path / "default_then_red"  # a switch without --prompt starts from the default prompt
  assert cli.main(["generate", "--demo", "backdrop", "--switch", "6:red", "--out", str(out), "--quiet",
                   "--no-video"]) == 0
  assert json.loads((out / "summary.json").read_text())["prompts"] == ["black", "red"]
  out = tmp_path / "switch"
  assert cli.main(["generate", "--demo", "backdrop", "--prompt", "blue", "--switch", "6:red", "--out", str(out),
                   "--quiet"]) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert [s["frame"] for s in summary["switches"]] == [6] and summary["recache"] == "window"
  assert summary["switches"][0]["recached_frames"]  # the window's frames re-ran under "red"
  assert probe(str(out / "video.mp4"))["frames"] == 12 and os.path.exists(out / "motion.png")
  latents = np.load(out / "latents.npy")  # [1, F, 3, H, W]
  model, info = demo.load_demo(backdrop_dir)
  words = WordEncoder.from_dict(info["prompts"])
  rollout = Rollout(model, WindowPolicy(window_frames=6), Sampler.from_steps([1000, 500], shift=3.0, eta=0.0),
                    batch=1, latent_hw=(16, 16), frames=12)
  context = jnp.asarray(words(["blue", "red"], CFG.text_len))[:, None]  # [K, B, P, D]
  want = np.asarray(rollout.run(context, key=seed_keys(0).noise, schedule=PromptSchedule(switch_frames=(6,)))[0])
  np.testing.assert_allclose(np.moveaxis(latents, 2, -1), want, atol=1e-5)


def test_the_backdrop_demo_names_an_unknown_word_before_loading(backdrop_dir, tmp_path, capsys, monkeypatch):
  from rf_jax import pipeline
  monkeypatch.setattr(pipeline, "load_dit", lambda *a, **k: pytest.fail("loaded a model"))
  for argv, message in ((["--prompt", "a fox"], "'a fox': this model knows the prompts black, blue, red"),
                        (["--prompt", "blue", "--switch", "6:pink"], "'pink': this model knows the prompts"),
                        (["--text-embeddings", "x.npy"], "reads one-word prompts (black, blue, red)")):
    assert cli.main(["generate", "--demo", "backdrop", "--out", str(tmp_path / "v"), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
  assert not os.path.exists(tmp_path / "v")
  with pytest.raises(SystemExit):  # argparse: --demo names a built-in model, not with --preset
    cli.main(["generate", "--demo", "backdrop", "--preset", "tiny", "--out", str(tmp_path / "v")])


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


def test_the_shipped_backdrop_demo_follows_a_prompt_switch_and_starts_from_an_image(tmp_path):
  """The conditional demo as a user runs it: `generate --demo backdrop --prompt blue --switch 24:red`. Every frame's
  backdrop (its median pixel) is within NEAR of blue before the switch and of red from 4 chunks after it (the
  backdrops are more than 2 NEAR apart, so a frame near one is near no other); the shapes keep moving; the video and
  the switch's marker are written. Then `--image` with `--prompt green`: the image is frame 0 and the backdrop stays
  green."""
  from rf_jax.data.shapes import BACKDROPS
  assert os.path.isfile(os.path.join(demo.BACKDROP_DIR, "model.safetensors")), \
      f"the shipped conditional demo is missing from {demo.BACKDROP_DIR}"
  out = tmp_path / "switch"
  assert cli.main(["generate", "--demo", "backdrop", "--prompt", "blue", "--switch", "24:red", "--frames", "48",
                   "--out", str(out), "--quiet"]) == 0
  videos = np.moveaxis(np.load(out / "latents.npy"), 2, -1)  # [1, 48, H, W, 3]
  before = demo.backdrop_distance(videos[:, :24], BACKDROPS["blue"])
  after = demo.backdrop_distance(videos[:, 36:], BACKDROPS["red"])
  assert before.max() < NEAR and after.max() < NEAR, (before.round(3), after.round(3))
  assert np.abs(np.diff(videos[0], axis=0)).mean() > 0.005  # still moving
  summary = json.loads((out / "summary.json").read_text())
  assert summary["switches"][0]["frame"] == 24 and summary["recache"] == "all_memory"
  assert probe(str(out / "video.mp4"))["frames"] == 48 and os.path.exists(out / "motion.png")
  # image-to-video under a prompt: a dataset frame over green is frame 0, and the video stays green
  from PIL import Image
  from rf_jax.data.shapes import ShapesConfig, shapes_clip
  frame = shapes_clip(ShapesConfig(), seed=5, index=0, frames=1, background=BACKDROPS["green"])[0]
  Image.fromarray(np.rint((frame + 1) * 127.5).astype(np.uint8)).save(tmp_path / "first.png")
  i2v = tmp_path / "i2v"
  assert cli.main(["generate", "--demo", "backdrop", "--image", str(tmp_path / "first.png"), "--prompt", "green",
                   "--frames", "12", "--out", str(i2v), "--quiet"]) == 0
  videos = np.moveaxis(np.load(i2v / "latents.npy"), 2, -1)  # [1, 13, H, W, 3]
  np.testing.assert_allclose(videos[0, 0], frame, atol=1 / 127.5)
  assert demo.backdrop_distance(videos, BACKDROPS["green"]).max() < NEAR
  assert probe(str(i2v / "video.mp4"))["frames"] == 13


NEAR = 0.06  # of a backdrop colour, largest channel difference on [0, 1] pixels


def test_the_backdrops_are_far_enough_apart_for_the_check():
  from rf_jax.data.shapes import BACKDROPS
  colours = np.asarray(list(BACKDROPS.values()))
  gaps = np.abs(colours[:, None] - colours[None]).max(-1)[~np.eye(len(colours), dtype=bool)]
  assert gaps.min() > 2 * NEAR  # (blue and purple are the closest: 0.18)
