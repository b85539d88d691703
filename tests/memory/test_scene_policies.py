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


@pytest.mark.parametrize("policy,chunks", [
    (DeepForcingPolicy(window_frames=9, sink_frames=2, capacity_frames=7, recent_frames=3, topc_max_reuse=-1), 5),
    # the window still covers sink frames 4-6 after a compression has turned the sink by one frame
    (DeepForcingPolicy(window_frames=11, sink_frames=7, capacity_frames=10, recent_frames=3), 4)],
    ids=["top_c", "turned_sink"])
def test_deep_forcing_re_keys_the_window_tokens_each_layer_holds_at_a_switch(model, policy, chunks):
  """Deep Forcing's re-cache (window): after compressions (tokens from mixed frames, the sink turned), a switch
  re-runs frames c - (W - F) .. c - 1 with the new prompt; every slot holding a token of one of them takes that
  token's key and value from one forward of those frames (the DiT called directly, at their own frames, seeing each
  other only), the key rotated at its frame and a sink token turned further by its layer's sink shift; every other
  slot and all bookkeeping are unchanged."""
  import jax.numpy as jnp
  from rf_jax.model.rope import rope_cos_sin, shift_cos_sin
  from rf_jax.ops.rope import apply_rope, rotate
  sampler = Sampler.from_steps()
  r = Rollout(model, policy, sampler, batch=2, latent_hw=HW, frames=24, recache="window")
  w, c = policy.window_frames - 3, 3 * chunks  # the frames re-run, the switch chunk's start
  assert r.recache_width == w
  old, new = (r.text_kv(jnp.asarray(x)) for x in contexts(2, batch=2))
  state, history = r.init_state(), np.zeros((2, 24, 4, 4, 16), np.float32)
  for j in range(chunks):
    state, out = r.step(state, old, j, *r.noise(jax.random.key(1), j))
    history[:, 3 * j:3 * j + 3] = np.asarray(out.latents)
  before = jax.tree.map(np.asarray, state)
  q = 4  # tokens per frame
  frames_held = np.where(before.token >= 0, before.token // q, -1)
  assert (np.asarray(before.sink_shift) != 0).any() and ((frames_held >= 0) & (frames_held < c - w)).any()
  frames = r.recache_frames(state, c)
  np.testing.assert_array_equal(frames, np.arange(c - w, c))
  recent = r.gather_frames(history, frames)
  state, _, _ = r.recache_call(state, new, recent, c, frames=frames)
  after = jax.tree.map(np.asarray, state)
  mask = jnp.ones((w * q, w * q), bool)
  _, kv = model(jnp.asarray(recent), jnp.full((2, w), sampler.context_noise, jnp.float32), new,
                frame_pos=jnp.arange(c - w, c, dtype=jnp.int32), self_mask=mask, memory=None)
  cos, sin = rope_cos_sin(jnp.arange(c - w, c), (2, 2), SMALL.head_dim)
  k_rot = np.asarray(apply_rope(kv.k, cos, sin))  # [L, B, 6, Q, N, H]
  v = np.asarray(kv.v)
  changed, turned = 0, 0
  for layer in range(SMALL.num_layers):
    for b in range(2):
      for slot, tok in enumerate(before.token[layer, b].tolist()):
        f = tok // q if tok >= 0 else -1
        if c - w <= f < c:
          want_k = k_rot[layer, b, f - (c - w), tok % q]  # [N, H]
          if f < policy.sink_frames:
            tc, ts = shift_cos_sin(jnp.asarray(before.sink_shift[layer, b]), SMALL.head_dim)
            want_k = np.asarray(rotate(jnp.asarray(want_k), tc, ts))
            turned += int(before.sink_shift[layer, b] != 0)
          np.testing.assert_allclose(after.k[layer, b, :, slot], want_k, atol=2e-5)
          np.testing.assert_allclose(after.v[layer, b, :, slot], v[layer, b, f - (c - w), tok % q], atol=2e-5)
          changed += 1
        else:
          np.testing.assert_array_equal(after.k[layer, b, :, slot], before.k[layer, b, :, slot])
          np.testing.assert_array_equal(after.v[layer, b, :, slot], before.v[layer, b, :, slot])
  assert changed > 0 and (turned > 0) == (policy.sink_frames > c - w)
  for name in ("token", "count", "local_end", "global_end", "win_q", "win_len", "sink_base", "has_base", "sink_shift"):
    np.testing.assert_array_equal(getattr(after, name), getattr(before, name))


def test_deep_forcing_switches_with_a_re_cache_in_a_rollout(model):
  """Through `Rollout.run`: the window re-cache is the default, one more compiled step, and it changes what follows
  the switch (against recache none) but nothing before it."""
  policy = DeepForcingPolicy(window_frames=9, sink_frames=2, capacity_frames=7, recent_frames=3)
  runs = {}
  for recache in ("window", "none"):
    r = Rollout(model, policy, Sampler.from_steps(), batch=1, latent_hw=HW, frames=21, recache=recache)
    runs[recache] = r.run(contexts(2), key=jax.random.key(0), schedule=PromptSchedule((12,)))[0]
    if recache == "window":
      assert r.switches[0]["recached_frames"] == list(range(6, 12))
  np.testing.assert_array_equal(runs["window"][:, :12], runs["none"][:, :12])
  assert np.abs(runs["window"][:, 12:] - runs["none"][:, 12:]).max() > 1e-4
  assert Rollout(model, policy, Sampler.from_steps(), batch=1, latent_hw=HW, frames=21).recache is Recache.WINDOW
  r = Rollout(model, policy, Sampler.from_steps(), batch=1, latent_hw=HW, frames=21, recache="all_memory")
  with pytest.raises(ValueError, match="deep_forcing re-caches its window"):  # said when a switch asks for it
    r.run(contexts(2), key=jax.random.key(0), schedule=PromptSchedule((12,)))
