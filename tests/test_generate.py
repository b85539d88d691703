"""`rf-jax generate`: outputs, summary, trace, atomicity, and clear errors."""

import json
import os

import numpy as np
import pytest

from rf_jax import cli
from rf_jax import io as rf_io


def run(*argv):
  return cli.main(["generate", "--preset", "tiny", "--latent-hw", "4", "4", "--quiet", "--no-video", *argv])


def test_generate_writes_latents_trace_and_summary(tmp_path, capsys):
  out = tmp_path / "video"
  assert run("--memory", "relax", "--reservoir-frames", "9", "--frames", "13", "--seed", "3", "--out", str(out)) == 0
  assert sorted(os.listdir(out)) == ["latents.npy", "memory_trace.json", "summary.json"]
  latents = np.load(out / "latents.npy")
  assert latents.shape == (1, 13, 16, 4, 4) and np.isfinite(latents).all()
  summary = json.loads((out / "summary.json").read_text())
  assert summary["frames"] == 13 and summary["generated_frames"] == 15 and summary["chunks"] == 5
  assert summary["compile_count"] == 1 and summary["peak_bytes"] > 0 and summary["seconds"] > 0
  assert summary["policy"] == {"policy": "relax", "sink_frames": 2, "history_frames": 1, "tail_frames": 1,
                               "num_candidates": 4, "reservoir_frames": 9, "positions": "hybrid",
                               "selection": "per_sample", "lambda": 2.0}
  trace = json.loads((out / "memory_trace.json").read_text())
  chunks = trace["chunks"]
  assert [c["chunk"] for c in chunks] == [0, 1, 2, 3, 4]
  assert chunks[0]["dense"] and not chunks[4]["dense"]
  assert chunks[4]["memory_frames"][-1] == 11 and chunks[4]["history"][0] in chunks[4]["candidates"]
  assert [p.name for p in tmp_path.iterdir()] == ["video"]  # no temporary folder left behind

  # same seed, same video; an existing output is never overwritten without --force
  capsys.readouterr()
  assert run("--memory", "relax", "--reservoir-frames", "9", "--frames", "13", "--seed", "3", "--out", str(out)) == 2
  assert "already exists" in capsys.readouterr().err
  assert run("--memory", "relax", "--reservoir-frames", "9", "--frames", "13", "--seed", "3", "--out", str(out),
             "--force") == 0
  np.testing.assert_array_equal(np.load(out / "latents.npy"), latents)


def test_a_failed_run_leaves_nothing_under_the_final_name(tmp_path, monkeypatch, capsys):
  """Interrupted after its first chunk: nothing under OUT, the unfinished run kept (and said) for --resume."""
  calls = []
  write = rf_io.LatentWriter.write

  def explode(self, first_frame, chunk, first_sample=0):
    calls.append(first_frame)
    if len(calls) == 2:
      raise KeyboardInterrupt  # as if the run were stopped after the first chunk
    write(self, first_frame, chunk, first_sample)
  monkeypatch.setattr(rf_io.LatentWriter, "write", explode)
  argv = ("--memory", "window", "--window-frames", "6", "--frames", "9", "--out", str(tmp_path / "v"))
  assert run(*argv) == 130
  assert sorted(p.name for p in tmp_path.iterdir()) == [".v.partial"]
  assert "--resume continues it" in capsys.readouterr().err
  monkeypatch.undo()
  assert run(*argv, "--resume") == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["v"]


@pytest.mark.parametrize("argv,message", [
    (["--memory", "window", "--lambda", "2"], "'lambda'"),
    (["--memory", "relax", "--positions", "rotary"], "positions='rotary'"),
    (["--memory", "slow_fast", "--rope-length", "5"], "rope_length=5"),
    (["--memory", "window", "--frames", "0"], "--frames 0"),
])
def test_bad_settings_fail_with_a_message_naming_them(tmp_path, capsys, argv, message):
  assert run(*argv, "--out", str(tmp_path / "v")) == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "v").exists()


def test_text_embeddings_are_checked(tmp_path, capsys):
  bad = tmp_path / "text.npy"
  np.save(bad, np.zeros((3, 5), np.float32))  # tiny's text_dim is 64
  assert run("--memory", "window", "--text-embeddings", str(bad), "--out", str(tmp_path / "v")) == 2
  err = capsys.readouterr().err
  assert str(bad) in err and "(3, 5)" in err
