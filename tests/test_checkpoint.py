import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rf_jax.checkpoint import load_model, load_params, save_checkpoint
from rf_jax.config import TINY
from rf_jax.model import CausalWanDiT


def _flat(state):
  return {tuple(p): np.asarray(v.get_value() if isinstance(v, nnx.Variable) else v) for p, v in nnx.to_flat_state(state)}


def test_orbax_round_trip_and_same_outputs(tmp_path):
  model = CausalWanDiT(TINY, rngs=nnx.Rngs(3))
  path = save_checkpoint(tmp_path / "ckpt", TINY, nnx.state(model, nnx.Param), meta={"note": "test"})
  config, state = load_params(path)
  assert config == TINY
  before, after = _flat(nnx.state(model, nnx.Param)), _flat(state)
  assert before.keys() == after.keys()
  for k in before:
    np.testing.assert_array_equal(before[k], after[k])
  restored = load_model(path)
  x = jax.random.normal(jax.random.key(0), (1, 3, 4, 4, 16))
  t = jnp.full((1, 3), 500.0)
  ctx = jax.random.normal(jax.random.key(1), (1, 5, TINY.text_dim))
  np.testing.assert_array_equal(np.asarray(model.forward_train(x, t, ctx)),
                                np.asarray(restored.forward_train(x, t, ctx)))


def test_restore_onto_given_shardings(tmp_path):
  model = CausalWanDiT(TINY, rngs=nnx.Rngs(3))
  path = save_checkpoint(tmp_path / "ckpt", TINY, nnx.state(model, nnx.Param))
  device = jax.devices()[-1]
  sharding = jax.sharding.SingleDeviceSharding(device)
  seen = []

  def shardings(p, shape):
    seen.append(p)
    return sharding

  _, state = load_params(path, shardings=shardings)
  leaves = [v.get_value() for _, v in nnx.to_flat_state(state)]
  assert len(seen) == len(leaves) and all(isinstance(v, jax.Array) and v.sharding == sharding for v in leaves)


def test_existing_output_is_not_overwritten(tmp_path):
  model = CausalWanDiT(TINY, rngs=nnx.Rngs(0))
  params = nnx.state(model, nnx.Param)
  path = save_checkpoint(tmp_path / "ckpt", TINY, params)
  with pytest.raises(FileExistsError, match="--force"):
    save_checkpoint(path, TINY, params)
  save_checkpoint(path, TINY, params, force=True)
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no partial or old folders left behind


def test_failed_write_leaves_nothing_under_the_final_name(tmp_path):
  model = CausalWanDiT(TINY, rngs=nnx.Rngs(0))
  flat = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  flat.pop(next(iter(flat)))
  with pytest.raises(ValueError, match="params do not match"):
    save_checkpoint(tmp_path / "ckpt", TINY, flat)
  assert os.listdir(tmp_path) == []


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match="not an rf_jax checkpoint"):
    load_params(tmp_path)
