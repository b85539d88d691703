"""Pipeline folders and generate's text/video path: prompts in batches, the random tiny pipeline, clear errors."""

import json

import numpy as np
import pytest

from rf_jax import cli, pipeline
from rf_jax.video import probe


def gen(*argv):
  return cli.main(["generate", "--quiet", "--latent-hw", "4", "4", *argv])


def test_prompts_in_padded_batches_each_get_their_solo_video(tmp_path):
  """3 prompts, 2 at a time: the second batch is padded; each sample equals `generate --prompt P` alone."""
  pipe = pipeline.random_pipeline(str(tmp_path / "pipe"), seed=1)
  prompts = tmp_path / "prompts.txt"
  prompts.write_text("# a comment\na red fox\n\nsnow on the hills\nthe sea at night\n", encoding="utf-8")
  out = tmp_path / "many"
  cache = str(tmp_path / "cache")
  assert gen("--checkpoint", pipe, "--prompts", str(prompts), "--batch", "2", "--frames", "6",
             "--text-cache", cache, "--out", str(out)) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["prompts"] == ["a red fox", "snow on the hills", "the sea at night"] and summary["samples"] == 3
  assert summary["video"]["files"] == ["video_000.mp4", "video_001.mp4", "video_002.mp4"]
  for name in summary["video"]["files"]:
    info = probe(str(out / name))
    assert (info["frames"], info["height"], info["width"]) == (21, 32, 32)
  latents = np.load(out / "latents.npy")
  assert latents.shape == (3, 6, 16, 4, 4) and not np.allclose(latents[0], latents[1])

  solo = tmp_path / "solo"
  assert gen("--checkpoint", pipe, "--prompt", "the sea at night", "--frames", "6", "--text-cache", cache,
             "--no-video", "--out", str(solo)) == 0
  assert json.loads((solo / "summary.json").read_text())["prompts_encoded"] == 0  # cached by the first run
  # (batch 2 vs batch 1: the same sums in another order)
  np.testing.assert_allclose(np.load(solo / "latents.npy")[0], latents[2], rtol=0, atol=1e-5)


def test_the_tiny_preset_is_the_random_pipeline_of_its_seed(tmp_path):
  """`--preset tiny --seed S` builds in memory exactly what random_pipeline(seed=S) writes."""
  pipe = pipeline.random_pipeline(str(tmp_path / "pipe"), seed=2)
  a, b = tmp_path / "a", tmp_path / "b"
  common = ["--prompt", "a fox", "--frames", "3", "--seed", "2", "--no-text-cache", "--no-video"]
  assert gen("--preset", "tiny", *common, "--out", str(a)) == 0
  assert gen("--checkpoint", pipe, *common, "--out", str(b)) == 0
  np.testing.assert_array_equal(np.load(a / "latents.npy"), np.load(b / "latents.npy"))


@pytest.mark.parametrize("argv,message", [
    (["--preset", "wan2.1-t2v-1.3b", "--prompt", "x"], "text prompts need the umT5 text encoder"),
    (["--prompts", "/nonexistent/prompts.txt"], "no such file"),
    (["--prompt", "a", "--text-embeddings", "x.npy"], "not both"),
    (["--prompt", "  "], "--prompt is empty"),
])
def test_text_errors_name_the_problem(tmp_path, capsys, argv, message):
  assert gen(*argv, "--out", str(tmp_path / "v")) == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "v").exists()


def test_a_pipeline_folder_is_checked(tmp_path):
  (tmp_path / "p").mkdir()
  (tmp_path / "p" / "pipeline.json").write_text(json.dumps({"format": "rf_jax.pipeline/1"}))
  with pytest.raises(ValueError, match=r"lacks \['dit', 'umt5', 'vae', 'tokenizer'\]"):
    pipeline.PipelineFolder.open(str(tmp_path / "p"))
  (tmp_path / "p" / "pipeline.json").write_text("{")
  with pytest.raises(ValueError, match="not valid JSON"):
    pipeline.PipelineFolder.open(str(tmp_path / "p"))
  assert not pipeline.is_pipeline(str(tmp_path / "nothing"))
