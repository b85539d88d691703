"""The training step's pieces: starting from a checkpoint (fine-tuning)."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from rf_jax.train import load_train_config
from rf_jax.train import step as step_mod

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "..", "configs", "train", "tiny.py")


@pytest.fixture(scope="module")
def tiny():
  return load_train_config(TINY)


def test_init_starts_from_the_checkpoint_and_refuses_another_architecture(tiny, tmp_path):
  from rf_jax.checkpoint import flatten, save_checkpoint
  cfg = tiny
  other = dataclasses.replace(cfg, seed=7)
  params = step_mod.initial_params(other)
  save_checkpoint(str(tmp_path / "ckpt"), cfg.model, {p: np.asarray(v) for p, v in flatten(params).items()})
  state = step_mod.init_state(dataclasses.replace(cfg, init=str(tmp_path / "ckpt")))
  for a, b, e in zip(jax.tree.leaves(params), jax.tree.leaves(state["params"]), jax.tree.leaves(state["ema"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))
  fresh = step_mod.initial_params(cfg)
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fresh)))
  deeper = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_layers=3))
  with pytest.raises(ValueError, match="differs from TrainConfig.model in num_layers"):
    step_mod.initial_params(dataclasses.replace(deeper, init=str(tmp_path / "ckpt")))


def test_a_missing_init_checkpoint_is_named(tiny, tmp_path):
  with pytest.raises((FileNotFoundError, ValueError), match="nowhere"):
    step_mod.initial_params(dataclasses.replace(tiny, init=str(tmp_path / "nowhere")))
