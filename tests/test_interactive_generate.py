"""`rf-jax generate` with prompt switches and from initial frames (image, video, latents): videos of the tiny preset
and the demo, what the trace and summary record, the schedule's rules, and bad input refused before any model."""

import json
import os

import numpy as np
import pytest

from rf_jax import cli
from rf_jax.sampling import PromptSchedule
from rf_jax.sampling.rollout import initial_blocks


def gen(*argv):
  return cli.main(["generate", "--quiet", *argv])


@pytest.fixture(scope="module")
def image(tmp_path_factory):
  from PIL import Image
  path = tmp_path_factory.mktemp("img") / "img.png"
  Image.fromarray((np.random.default_rng(0).random((80, 120, 3)) * 255).astype(np.uint8)).save(path)
  return str(path)


def test_schedule_rounds_up_to_a_chunk_and_switches_once_per_chunk():
  plan = PromptSchedule((4, 5, 12)).chunk_prompts([0, 3, 6, 9, 12])
  assert plan == [(0, False), (0, False), (1, True), (2, True), (3, True)]  # 4 and 5 both fall before chunk 6
  with pytest.raises(ValueError, match="not sorted"):
    PromptSchedule((9, 6))
  with pytest.raises(ValueError, match="past the end"):
    PromptSchedule((30,)).check(24)


def test_initial_frame_counts_follow_self_forcing():
  assert initial_blocks(1, 3) == [(0, 1)] and initial_blocks(4, 3) == [(0, 1), (1, 3)]
  assert initial_blocks(6, 3) == [(0, 3), (3, 3)]
  with pytest.raises(ValueError, match="2 initial frames cannot be taken with 3-frame chunks.*1, 3, 4"):
    initial_blocks(2, 3)


def test_prompt_switches_make_a_video_with_the_switches_recorded(tmp_path, capsys):
  out = tmp_path / "sw"
  assert gen("--preset", "tiny", "--memory", "window", "--window-frames", "9", "--sink-frames", "3", "--prompt", "a fox",
             "--switch", "6:a bird", "--switch", "14:a tree", "--frames", "24", "--out", str(out)) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert [(s["chunk"], s["frame"], s["prompt"]) for s in summary["switches"]] == [(2, 6, 1), (5, 15, 2)]
  assert summary["switches"][1]["recached_frames"] == list(range(9, 15))  # the global sink keeps frames 0-2
  assert summary["prompts"] == ["a fox", "a bird", "a tree"] and summary["compile_count"] == 1
  trace = json.loads((out / "memory_trace.json").read_text())
  assert [c["prompt"] for c in trace["chunks"]] == [0, 0, 1, 1, 1, 2, 2, 2]
  assert {"video.mp4", "motion.png", "latents.npy"} <= set(os.listdir(out))
  assert np.load(out / "latents.npy").shape == (1, 24, 16, 8, 8)


def test_image_to_video_with_the_tiny_preset_and_the_demo(tmp_path, image):
  out = tmp_path / "i2v"
  assert gen("--preset", "tiny", "--image", image, "--frames", "6", "--out", str(out)) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["initial_frames"] == 1 and summary["latents"]["shape"][1] == 7
  assert summary["video"]["frames"] == 1 + 4 * 6  # the image's frame, then 4 pixel frames per latent frame
  demo = tmp_path / "demo"
  assert gen("--image", image, "--frames", "6", "--out", str(demo)) == 0  # pixel space: the image is frame 0
  latents = np.load(demo / "latents.npy")
  assert latents.shape[:2] == (1, 7) and -1 <= latents[0, 0].min() and latents[0, 0].max() <= 1
  ext = tmp_path / "ext"
  assert gen("--preset", "tiny", "--init-video", str(out / "video.mp4"), "--frames", "3", "--out", str(ext)) == 0
  assert json.loads((ext / "summary.json").read_text())["initial_frames"] == 7  # 25 pixel frames -> 7 latents


@pytest.mark.parametrize("argv,message", [
    (["--prompt", "a", "--switch", "99:b"], "switch frame 99 is past the end"),
    (["--prompt", "a", "--prompt", "b", "--switch", "6:c"], "exactly one starting prompt"),
    (["--switch", "6:c"], "exactly one starting prompt"),
    (["--prompt", "a", "--switch", "9:b", "--switch", "6:c"], "not sorted"),
    (["--prompt", "a", "--switch", "6:"], "the prompt is empty"),
    (["--prompt", "a", "--switch", "six:b"], "expected FRAME:PROMPT"),
    (["--image", "nope.png"], "--image nope.png: no such file"),
    (["--init-latents", "LAT2"], "2 initial frames cannot be taken with 3-frame chunks"),
    (["--memory", "deep_forcing", "--recache", "all_memory", "--prompt", "a", "--switch", "6:b"],
     "deep_forcing re-caches its window"),
    (["--memory", "slow_fast", "--mode", "upstream", "--recache", "window", "--prompt", "a", "--switch", "6:b"],
     "slow_fast re-caches all_memory"),
    (["--memory", "slow_fast", "--recache", "window", "--prompt", "a", "--switch", "6:b"], "slow_fast re-caches"),
    (["--memory", "relax", "--recache", "window", "--prompt", "a", "--switch", "6:b"], "relax re-caches all_memory"),
    (["--memory", "relax", "--prompt", "a", "--cut", "6:b"], "--cut: KV Flush and RoPE Cut are Infinity-RoPE's"),
    (["--memory", "window", "--recache", "flush", "--prompt", "a", "--switch", "6:b"], "--recache flush: KV Flush"),
    (["--memory", "infinity_rope", "--sink-frames", "2", "--prompt", "a", "--cut", "1:b"], "inside the sink"),
    (["--memory", "deep_forcing", "--capacity-frames", "3"], "capacity_frames=3 is smaller"),
    (["--memory", "deep_forcing", "--topc-max-reuse", "0"], "topc_max_reuse=0"),
])
def test_bad_interactive_input_is_refused_before_any_model(tmp_path, capsys, monkeypatch, argv, message):
  np.save(tmp_path / "lat2.npy", np.zeros((2, 16, 8, 8), np.float32))
  argv = [str(tmp_path / "lat2.npy") if a == "LAT2" else a for a in argv]
  import rf_jax.pipeline as pipeline
  monkeypatch.setattr(pipeline, "load_dit", lambda *a, **k: pytest.fail("a model was loaded"))
  assert gen("--preset", "tiny", "--frames", "12", "--out", str(tmp_path / "bad"), *argv) == 2
  assert message in capsys.readouterr().err


def test_scene_cuts_from_the_command_line(tmp_path):
  out = tmp_path / "ir"
  assert gen("--preset", "tiny", "--memory", "infinity_rope", "--window-frames", "9", "--prompt", "a fox", "--switch",
             "6:a bird", "--cut", "12:a tree", "--frames", "18", "--no-video", "--out", str(out)) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["recache"] == "flush"
  assert [(s["frame"], s["flush"], s["cut"]) for s in summary["switches"]] == [(6, True, False), (12, True, True)]
  trace = json.loads((out / "memory_trace.json").read_text())["chunks"]
  assert [c["scene_cut"] for c in trace] == [False] * 4 + [True, False]
  assert trace[2]["slot_frames"][:3] == [0, -1, -1]  # a flush before the buffer is full copies empty slots


@pytest.mark.parametrize("memory,recached", [
    (["relax", "--reservoir-frames", "12"], [5, 6, 7, 8]),  # the live ring (the sink keeps its keys)
    (["slow_fast", "--slow-frames", "2", "--rope-length", "12"], [3, 6, 7, 8]),  # a promoted frame, the fast window
])
def test_relax_and_slow_fast_re_cache_their_whole_memory_at_a_switch(tmp_path, memory, recached):
  """The default re-cache of relax and slow_fast (all_memory) re-keys what the memory holds with the new prompt: the
  frames before the switch are unchanged, the ones after it differ from a switch without a re-cache."""
  runs = {}
  for recache in ("all_memory", "none"):
    out = tmp_path / recache
    assert gen("--preset", "tiny", "--memory", *memory, "--prompt", "a fox", "--switch", "9:a bird", "--recache",
               recache, "--frames", "18", "--no-video", "--out", str(out)) == 0
    runs[recache] = (np.load(out / "latents.npy"), json.loads((out / "summary.json").read_text()))
  (a, summary), (b, _) = runs["all_memory"], runs["none"]
  assert summary["recache"] == "all_memory" and summary["switches"][0]["recached_frames"] == recached
  np.testing.assert_array_equal(a[:, :9], b[:, :9])
  assert np.abs(a[:, 9:] - b[:, 9:]).max() > 1e-3
