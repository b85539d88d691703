"""Training: the loss falls, one compile, kill-and-resume reproduces the uninterrupted run exactly, mesh training."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from rf_jax.train import load_train_config, train

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "..", "configs", "train", "tiny.py")


def _params(run):
  import orbax.checkpoint as ocp
  from rf_jax.train.loop import restore_target
  cfg = load_train_config(TINY)
  with ocp.CheckpointManager(os.path.join(run, "checkpoints")) as m:  # whatever mesh saved it, onto one device
    state = m.restore(m.latest_step(), args=ocp.args.StandardRestore(restore_target(cfg)))
  return state


def _metrics(run, keys=("step", "loss", "grad_norm", "lr")):
  with open(os.path.join(run, "metrics.jsonl")) as f:
    return [{k: json.loads(ln)[k] for k in keys} for ln in f if ln.strip()]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("train") / "whole")
  return out, train(load_train_config(TINY), out, progress=False)


def test_loss_falls_with_one_compile_and_the_model_is_exported(whole):
  out, result = whole
  assert result["compile_count"] == 1 and result["ran"] == 40
  losses = [m["loss"] for m in _metrics(out)]
  assert len(losses) == 8 and np.mean(losses[-2:]) < 0.75 * losses[0], losses
  assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == ["30", "40"]  # keep = 2
  from rf_jax.checkpoint import load_model
  assert load_model(os.path.join(out, "model")).config.in_dim == 3
  assert open(os.path.join(out, "loss.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_killed_and_restarted_training_reproduces_the_uninterrupted_run(whole, tmp_path):
  out, _ = whole
  killed = str(tmp_path / "killed")
  cmd = [sys.executable, "-m", "rf_jax.cli", "train", TINY, "--out", killed, "--quiet"]
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  ckpt = os.path.join(killed, "checkpoints")
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(os.path.join(ckpt, "10")):
      break
    time.sleep(0.02)
  assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  steps = sorted(int(n) for n in os.listdir(ckpt) if n.isdigit())
  assert steps and steps[-1] < 40, steps

  resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  report = json.loads(resumed.stdout.strip().splitlines()[-1])
  assert 10 <= report["resumed_from"] < 40 and report["compile_count"] == 1
  a, b = _params(out), _params(killed)
  import jax
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # exactly, every parameter, moment and EMA
  assert _metrics(out) == _metrics(killed)  # the log reads as one run


def test_another_config_in_the_same_folder_is_refused(whole):
  out, _ = whole
  cfg = dataclasses.replace(load_train_config(TINY), steps=50)
  with pytest.raises(ValueError, match=r"another config \(differs in steps\)"):
    train(cfg, out, progress=False)


def test_data_parallel_training_on_two_devices_matches_one(whole, tmp_path):
  out, _ = whole
  run = str(tmp_path / "mesh")
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
  res = subprocess.run([sys.executable, "-m", "rf_jax.cli", "train", TINY, "--out", run, "--quiet",
                        "--mesh", "data=2"], capture_output=True, text=True, timeout=600, env=env)
  assert res.returncode == 0, res.stderr[-3000:]
  import jax
  for x, y in zip(jax.tree.leaves(_params(out)), jax.tree.leaves(_params(run))):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=2e-4)  # sums over the batch reorder


def test_a_conditional_model_trains_with_one_compile_and_reads_its_words(tmp_path):
  """backdrops: the loop feeds each step's words and switched context (one compile); the exported model's output
  depends on the word it is given."""
  import jax.numpy as jnp
  from rf_jax.checkpoint import load_model
  from rf_jax.text.words import WordEncoder
  cfg = dataclasses.replace(load_train_config(TINY), steps=10, save_every=10, log_every=5,
                            backdrops=("black", "red"), backdrop_switch=0.5)
  out = str(tmp_path / "cond")
  result = train(cfg, out, progress=False)
  assert result["compile_count"] == 1 and result["ran"] == 10
  assert all("switch_fraction" in m for m in _metrics(out, ("step", "switch_fraction")))
  model = load_model(os.path.join(out, "model"))
  words = WordEncoder.fixed(cfg.backdrops, cfg.model.text_dim)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 16, 16, 3)), jnp.float32)
  flows = [model.forward_train(x, jnp.full((1, 3), 500.0), jnp.asarray(words([w], cfg.model.text_len)),
                               chunk_frames=3) for w in cfg.backdrops]
  assert float(jnp.abs(flows[0] - flows[1]).max()) > 1e-4
