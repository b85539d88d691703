"""Nothing lost: a killed `generate` resumes to the latents of an uninterrupted run, two runs on one OUT never
replace each other's output, and leftovers of killed runs are found and removed (with a word on stderr)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rf_jax import cli
from rf_jax.io import atomic_directory, clean_leftovers

ARGS = ["generate", "--preset", "tiny", "--memory", "window", "--window-frames", "9", "--sink-frames", "3",
        "--prompt", "a fox", "--switch", "33:a bird", "--frames", "60", "--latent-hw", "4", "4", "--save-every", "2"]


def _start(out, *extra):
  return subprocess.Popen([sys.executable, "-m", "rf_jax.cli", *ARGS, "--quiet", "--out", str(out), *extra],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_killed_generate_resumes_to_the_same_latents(tmp_path):
  whole = tmp_path / "whole"
  assert cli.main([*ARGS, "--quiet", "--out", str(whole)]) == 0
  out = tmp_path / "killed"
  progress = tmp_path / ".killed.partial" / ".resume" / "progress.json"
  proc = _start(out)
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if progress.exists() and json.loads(progress.read_text() or "{}").get("chunk", 0) >= 4:
      break
    time.sleep(0.02)
  assert proc.poll() is None, proc.communicate()  # still running when killed
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not out.exists() and (tmp_path / ".killed.partial").is_dir()
  assert cli.main([*ARGS, "--quiet", "--out", str(out)]) == 2  # an unfinished run is not discarded silently
  assert cli.main([*ARGS, "--quiet", "--out", str(out), "--resume"]) == 0
  np.testing.assert_array_equal(np.load(out / "latents.npy"), np.load(whole / "latents.npy"))
  summary = json.loads((out / "summary.json").read_text())
  assert summary["resumed_from"]["chunk"] >= 4 and summary["switches"] == json.loads(
      (whole / "summary.json").read_text())["switches"]
  from rf_jax.video import probe
  assert probe(str(out / "video.mp4"))["frames"] == probe(str(whole / "video.mp4"))["frames"]
  assert not (tmp_path / ".killed.partial").exists() and not list(out.glob(".resume*"))
  assert cli.main([*ARGS, "--quiet", "--out", str(tmp_path / "none"), "--resume"]) == 2  # nothing to resume


def test_a_second_run_on_the_same_out_stops_and_loses_nothing(tmp_path):
  out = tmp_path / "same"
  first = _start(out)
  lock = tmp_path / ".same.lock"
  deadline = time.time() + 60
  while not lock.exists() and time.time() < deadline and first.poll() is None:
    time.sleep(0.02)
  second = _start(out)
  _, err = second.communicate(timeout=120)
  assert second.returncode == 2 and "being written by another run" in err
  _, err = first.communicate(timeout=300)
  assert first.returncode == 0, err
  assert np.load(out / "latents.npy").shape[1] == 60 and not lock.exists()


def test_the_final_rename_never_replaces_an_out_that_appeared(tmp_path):
  out = tmp_path / "o"
  with pytest.raises(FileExistsError, match="appeared while this run was writing"):
    with atomic_directory(out) as tmp:
      open(os.path.join(tmp, "mine"), "w").close()
      os.makedirs(out / "theirs")  # another writer finished first
  assert os.listdir(out) == ["theirs"]
  kept = [p for p in os.listdir(tmp_path) if p.startswith("o.conflict-")]
  assert kept and os.listdir(tmp_path / kept[0]) == ["mine"]


def test_leftovers_of_killed_runs_are_removed_and_said(tmp_path, capsys):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  stale = tmp_path / f".o.partial-{dead.pid}-abc"
  stale.mkdir()
  live = tmp_path / f".o.partial-{os.getpid()}-xyz"
  live.mkdir()
  assert clean_leftovers(str(tmp_path), ".o.partial-", what="an unfinished output") == [str(stale)]
  assert not stale.exists() and live.exists()
  assert "left by a killed run" in capsys.readouterr().err
