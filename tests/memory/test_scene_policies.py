"""Infinity-RoPE's scene events and Deep Forcing's per-sample decisions on a small random model (the exact rules are
held to the fixtures and the independent NumPy rollouts in tests/reference/test_policies.py)."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

from rf_jax.config import get_preset
from rf_jax.memory import DeepForcingPolicy, InfinityRoPEPolicy, policy_from_dict
from rf_jax.model import CausalWanDiT
from rf_jax.sampling import PromptSchedule, Recache, Rollout, Sampler

HW = (4, 4)


SMALL = dataclasses.replace(get_preset("tiny"), dim=32, ffn_dim=64, num_heads=2, freq_dim=16, text_dim=8, text_len=4)


@pytest.fixture(scope="module")
def model():
  return CausalWanDiT(SMALL, rngs=nnx.Rngs(3))


def contexts(k, batch=1):
  return np.random.default_rng(7).normal(size=(k, batch, 4, SMALL.text_dim)).astype(np.float32)


def test_flush_and_cut_positions_are_data_one_compilation(model):
  r = Rollout(model, InfinityRoPEPolicy(window_frames=9), Sampler.from_steps(), batch=1, latent_hw=HW, frames=24)
  assert r.recache is Recache.FLUSH  # the policy's default: a switch is a scene boundary
  key = jax.random.key(0)
  runs = [r.run(contexts(2), key=key, schedule=PromptSchedule((at,), (cut,)))[0]
          for at, cut in ((9, False), (9, True), (15, True))]
  assert r.compile_count == 1 and r._event._cache_size() == 1
  assert [(s["chunk"], s["flush"], s["cut"]) for s in r.switches] == [(5, True, True)]
  np.testing.assert_array_equal(runs[0][:, :9], runs[1][:, :9])  # nothing changes before the event
  assert np.abs(runs[0][:, 9:] - runs[1][:, 9:]).max() > 1e-4  # the cut moves the chunk's positions
  assert np.abs(runs[1] - runs[2]).max() > 1e-4


def test_deep_forcing_samples_decide_alone(model):
  """Each sample compresses its own cache: sample i of a batch equals a batch-1 run with its key."""
  policy = DeepForcingPolicy(window_frames=9, sink_frames=2, capacity_frames=7, recent_frames=3, topc_max_reuse=2)
  keys = jax.random.split(jax.random.key(1), 2)
  both, outs = Rollout(model, policy, Sampler.from_steps(), batch=2, latent_hw=HW, frames=21).run(
      contexts(1, 2)[0], key=keys)
  assert np.asarray(outs[-1].calls["compressed"])[0].all()  # every layer of both samples compressed
  one = Rollout(model, policy, Sampler.from_steps(), batch=1, latent_hw=HW, frames=21)
  for i in range(2):
    alone, _ = one.run(contexts(1, 2)[0][i:i + 1], key=keys[i:i + 1])
    np.testing.assert_allclose(both[i:i + 1], alone, atol=2e-5)


@pytest.mark.parametrize("block,message", [
    ({"policy": "deep_forcing", "capacity_frames": 6}, "capacity_frames=6 is smaller than sink_frames \\+ recent"),
    ({"policy": "deep_forcing", "recent_frames": 2}, "recent_frames=2 must be at least the chunk"),
    ({"policy": "deep_forcing", "topc_max_reuse": 0}, "topc_max_reuse=0"),
    ({"policy": "deep_forcing", "capacity_frames": 30}, "capacity_frames=30 must be <= window_frames=21"),
    ({"policy": "deep_forcing", "fusion": "max"}, "fusion='max' is not ported"),
    ({"policy": "infinity_rope", "sink_frames": 0}, "sink_frames=0 must be >= 1"),
    ({"policy": "infinity_rope", "window_frames": 3}, "window_frames=3 must be at least"),
    ({"policy": "window", "positions": "window_relative", "window_frames": 4, "sink_frames": 2}, "infinity_rope"),
])
def test_bad_settings_name_the_setting(block, message):
  with pytest.raises(ValueError, match=message):
    policy_from_dict(block).validate(3)


def test_the_window_relative_spelling_means_infinity_rope():
  assert policy_from_dict({"policy": "window", "window_frames": 9, "sink_frames": 1,
                           "positions": "window_relative"}) == InfinityRoPEPolicy(window_frames=9, sink_frames=1)
