"""Sweeps: the grid, one compile per memory layout, samples equal to `generate`, errors, and kill-and-resume."""

import filecmp
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rf_jax import cli
from rf_jax.memory import InfinityRoPEPolicy, RelaxPolicy, WindowPolicy
from rf_jax.sweep import Sweep, grid, label, load_sweep, plan, run_sweep


CONFIG = textwrap.dedent("""
    from rf_jax.memory import RelaxPolicy, WindowPolicy
    from rf_jax.sweep import Sweep, grid
    SWEEP = Sweep(policies=(*grid(RelaxPolicy(reservoir_frames=12), lam=[0.0, 8.0]),
                            WindowPolicy(window_frames=6, sink_frames=3)),
                  prompts=("random:3", "emb.npy"), seeds=(3, 5), frames=15, batch=2, weights_seed=3)
""")


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory):
  path = tmp_path_factory.mktemp("conf") / "sweep.py"
  path.write_text(CONFIG)
  np.save(path.parent / "emb.npy", np.random.default_rng(0).normal(size=(5, 64)).astype(np.float32))
  return str(path)


@pytest.fixture(scope="module")
def whole(sweep_file, tmp_path_factory):
  """An uninterrupted sweep: (its folder, run_sweep's report)."""
  out = tmp_path_factory.mktemp("sweeps") / "whole"
  return out, run_sweep(load_sweep(sweep_file), str(out), progress=False)


def test_grid_and_plan():
  policies = grid(RelaxPolicy(), lam=[0.0, 1.0], history_frames=[1, 2])
  assert [(p.lam, p.history_frames) for p in policies] == [(0.0, 1), (0.0, 2), (1.0, 1), (1.0, 2)]
  with pytest.raises(ValueError, match="has no setting 'lamda'"):
    grid(RelaxPolicy(), lamda=[1])
  sweep = Sweep(policies=policies[:2], prompts=("random:0",), seeds=(0, 1, 2))
  units = plan(sweep, 2)
  assert [(u.config, u.first, u.count) for u in units] == [(0, 0, 2), (0, 2, 1), (1, 0, 2), (1, 2, 1)]
  assert label(RelaxPolicy(lam=0.5)) == "relax lam=0.5"


def tree(root):
  return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_sweep_runs_compiles_once_per_layout_matches_generate_and_resumes_after_kill(sweep_file, whole, tmp_path):
  out, result = whole
  assert result["units"] == 6 and result["ran"] == 6 and result["layouts"] == 2
  assert sorted(result["compiles"].values()) == [1, 1]  # lambda is traced: two settings, one compile
  import tensorstore as ts
  lat = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(out / "store.zarr/latents")}}
                ).result().read().result()
  assert lat.shape == (3, 4, 15, 16, 8, 8) and np.isfinite(lat).all()
  with open(out / "results.csv") as f:
    rows = f.read().splitlines()
  assert len(rows) == 1 + 12 and rows[0].startswith("config,label,policy,sample,prompt,seed,motion_energy")
  assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  # Relax's lambda changes what is selected, so configurations differ; a sample is what `generate` gives for
  # its seed (prompt random:3 = generate's random prompt for seed 3; generate draws weights from --seed too).
  assert not np.allclose(lat[0], lat[1])
  gen = tmp_path / "gen"
  assert cli.main(["generate", "--preset", "tiny", "--seed", "3", "--frames", "15", "--reservoir-frames", "12",
                   "--lambda", "8.0", "--out", str(gen), "--quiet", "--no-video"]) == 0
  np.testing.assert_allclose(lat[1, 0], np.load(gen / "latents.npy")[0], rtol=0, atol=1e-6)
  # A sweep killed halfway resumes to this sweep's store, byte for byte.
  check_kill_and_resume(sweep_file, out, tmp_path)
  # A rerun finds everything done.
  again = run_sweep(load_sweep(sweep_file), str(out), progress=False)
  assert again["ran"] == 0 and again["skipped"] == 6


def test_errors_name_the_problem(sweep_file, tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "sweep.json").write_text(json.dumps({"format": "rf_jax.sweep/1", "seeds": [9]}))
  with pytest.raises(ValueError, match=r"holds a different sweep \(differs in .*seeds"):
    run_sweep(load_sweep(sweep_file), str(out), progress=False)
  bad = Sweep(policies=(WindowPolicy(),), prompts=("a red fox",), model="wan2.1-t2v-1.3b")  # random, no umT5
  with pytest.raises(ValueError, match="text prompts need the umT5 text encoder"):
    run_sweep(bad, str(tmp_path / "o2"), progress=False)
  with pytest.raises(ValueError, match="no such file"):
    run_sweep(Sweep(policies=(WindowPolicy(),), prompts=("missing.npy",)), str(tmp_path / "o3"), progress=False)
  with pytest.raises(ValueError, match="defines no SWEEP"):
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    load_sweep(str(empty))
  with pytest.raises(ValueError, match="not a memory policy"):
    Sweep(policies=({"policy": "relax"},))


def test_text_prompts_are_encoded_once_and_match_generate(tmp_path, monkeypatch):
  """A text prompt in a sweep is what `generate --prompt` gives (tiny: random umT5 of the weights seed)."""
  monkeypatch.setenv("RF_JAX_CACHE", str(tmp_path / "cache"))
  sweep = Sweep(policies=(WindowPolicy(window_frames=6),), prompts=("a red fox",), seeds=(5,), frames=6,
                latent_hw=(4, 4), weights_seed=5)
  run_sweep(sweep, str(tmp_path / "s"), progress=False)
  assert len(os.listdir(tmp_path / "cache" / "text")) == 1  # the encoded prompt, kept for the next sweep
  import tensorstore as ts
  lat = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "s" / "store.zarr/latents")}}
                ).result().read().result()
  assert cli.main(["generate", "--preset", "tiny", "--seed", "5", "--prompt", "a red fox", "--memory", "window",
                   "--window-frames", "6", "--frames", "6", "--latent-hw", "4", "4", "--no-video", "--quiet",
                   "--out", str(tmp_path / "g")]) == 0
  assert json.loads((tmp_path / "g" / "summary.json").read_text())["prompts_encoded"] == 0  # the sweep's entry
  np.testing.assert_allclose(lat[0, 0], np.load(tmp_path / "g" / "latents.npy")[0], rtol=0, atol=1e-6)


def test_shipped_sweep_files_load():
  here = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "sweeps")
  for name in sorted(os.listdir(here)):
    if name.endswith(".py"):
      assert load_sweep(os.path.join(here, name)).policies


def check_kill_and_resume(sweep_file, whole, tmp_path):

  killed = tmp_path / "killed"
  cmd = [sys.executable, "-m", "rf_jax.cli", "sweep", sweep_file, "--out", str(killed), "--quiet"]
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  done = killed / "done"
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    if done.is_dir() and len(os.listdir(done)) >= 2:
      break
    time.sleep(0.05)
  assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  finished = len([n for n in os.listdir(done) if n.endswith(".json")])
  assert 2 <= finished < 6, finished
  assert not (killed / "results.csv").exists()  # written at the end only

  resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  report = json.loads(resumed.stdout.strip().splitlines()[-1])
  assert report["skipped"] == finished and report["ran"] == 6 - finished

  compared = [p for p in tree(whole) if p != "runs.jsonl"]
  assert compared == [p for p in tree(killed) if p != "runs.jsonl"]
  _, mismatch, errors = filecmp.cmpfiles(whole, killed, compared, shallow=False)
  assert not mismatch and not errors, (mismatch, errors)


def test_switch_points_and_initial_frames_grid_in_one_compile_and_match_generate(tmp_path, monkeypatch):
  """Schedules and initial latents are conditions of the samples: one compiled chunk step for all of them, and a
  sample is what `generate` writes with the same prompt, switch, initial latents and seed."""
  monkeypatch.setenv("RF_JAX_CACHE", str(tmp_path / "cache"))
  np.save(tmp_path / "init.npy", np.random.default_rng(0).normal(size=(1, 16, 4, 4)).astype(np.float32))
  sweep = Sweep(policies=(WindowPolicy(window_frames=9, sink_frames=3),), prompts=("a red fox",), seeds=(5,),
                frames=9, latent_hw=(4, 4), weights_seed=5, switches=((), ((4, "a blue bird"),), ((7, "a blue bird"),)),
                initial=("init.npy",), source_dir=str(tmp_path))
  result = run_sweep(sweep, str(tmp_path / "s"), progress=False)
  assert list(result["compiles"].values()) == [1] and result["units"] == 3
  import tensorstore as ts
  lat = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "s" / "store.zarr/latents")}}
                ).result().read().result()
  assert lat.shape[:3] == (1, 3, 10)  # 1 initial + 9 generated frames
  rows = (tmp_path / "s" / "results.csv").read_text().splitlines()
  assert rows[0].startswith("config,label,policy,sample,prompt,seed,switches,initial,") and len(rows) == 4
  assert cli.main(["generate", "--preset", "tiny", "--seed", "5", "--prompt", "a red fox", "--switch", "4:a blue bird",
                   "--init-latents", str(tmp_path / "init.npy"), "--memory", "window", "--window-frames", "9",
                   "--sink-frames", "3", "--frames", "9", "--latent-hw", "4", "4", "--no-video", "--quiet",
                   "--out", str(tmp_path / "g")]) == 0
  np.testing.assert_allclose(lat[0, 1], np.load(tmp_path / "g" / "latents.npy")[0], rtol=0, atol=1e-6)
  assert np.abs(lat[0, 1] - lat[0, 2]).max() > 1e-3  # a later switch point gives another video


def test_scene_cut_positions_grid_in_one_compile(tmp_path, monkeypatch):
  """Infinity-RoPE's flush + cut at two positions: two conditions, one compiled chunk step, two videos; a cut under
  a policy without scene events is refused when the sweep is built."""
  monkeypatch.setenv("RF_JAX_CACHE", str(tmp_path / "cache"))
  sweep = Sweep(policies=(InfinityRoPEPolicy(window_frames=9),), prompts=("a red fox",), frames=15, latent_hw=(4, 4),
                switches=(((6, "a blue bird", True),), ((9, "a blue bird", True),)))
  result = run_sweep(sweep, str(tmp_path / "s"), progress=False)
  assert list(result["compiles"].values()) == [1] and result["units"] == 2
  import tensorstore as ts
  lat = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(tmp_path / "s" / "store.zarr/latents")}}
                ).result().read().result()
  np.testing.assert_array_equal(lat[0, 0, :6], lat[0, 1, :6])
  assert np.abs(lat[0, 0, 6:] - lat[0, 1, 6:]).max() > 1e-4
  with pytest.raises(ValueError, match="scene event; policy 'window' has none"):
    Sweep(policies=(WindowPolicy(window_frames=9),), switches=(((6, "b", True),),))
