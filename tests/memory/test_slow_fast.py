"""Context Forcing's slow-fast memory in clean mode: promotion rule, FIFO, fast window, bounded positions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rf_jax.memory import Chunk, SlowFastPolicy, policy_from_dict
from rf_jax.memory.reservoir import Geometry
from rf_jax.model.attention import FrameKV

F = 3


def run_clean(policy, chunks, batch=1, seed=0):
  geom = Geometry(2, batch, 2, 2, 4, F, chunks * F)
  state = policy.init(geom)
  rng = np.random.default_rng(seed)
  end = jax.jit(lambda p, st, kv, c: policy.end_chunk(p, st, None, kv, Chunk(c, F, (1, 2))))
  traces = []
  for j in range(chunks):
    k = jnp.asarray(rng.normal(size=(2, batch, F, 2, 2, 4)).astype(np.float32))
    state, tr = end(policy.params(), state, FrameKV(k, k), jnp.int32(j * F))
    traces.append(jax.tree.map(np.asarray, tr))
  return state, traces


def test_threshold_above_every_similarity_promotes_every_chunk_after_the_sink_fifo():
  policy = SlowFastPolicy(sink_frames=3, slow_frames=4, fast_frames=6, rope_length=13, threshold=2.0)
  state, traces = run_clean(policy, 12)
  assert [bool(t["promoted"][0]) for t in traces] == [False] + [True] * 11
  assert sorted(traces[-1]["slow_frames"][0].tolist()) == [24, 27, 30, 33]  # the newest 4 promotions
  held = sorted(int(x) for x in np.asarray(state.res.frame[0]) if x >= 0)
  assert held == [0, 1, 2, 24, 27, 30, 33, 33, 34, 35]  # sink, slow, fast window (the 3 frames before the next chunk)


def test_threshold_below_every_similarity_promotes_only_the_first_eligible_chunk():
  policy = SlowFastPolicy(sink_frames=3, slow_frames=4, fast_frames=6, rope_length=13, threshold=-2.0)
  _, traces = run_clean(policy, 8)
  assert [bool(t["promoted"][0]) for t in traces] == [False, True] + [False] * 6
  assert np.isnan(traces[1]["similarity"][0]) and not np.isnan(traces[2]["similarity"][0])


def test_positions_are_bounded_and_the_chunk_ends_at_the_anchor():
  policy = SlowFastPolicy(sink_frames=3, slow_frames=4, fast_frames=6, rope_length=13, threshold=0.1)
  _, traces = run_clean(policy, 30, batch=2, seed=3)
  for j, t in enumerate(traces):
    c = j * F
    pos = t["memory_positions"]
    assert pos.max() <= 12 and t["chunk_positions"].max() <= 12
    assert (t["chunk_positions"][:, -1] == min(c + 2, 12)).all() or j < 3
    for b in range(2):  # the sink is at 0..2; every other attended frame gets its own position
      frames = t["memory_frames"][b]
      sink = [int(p) for p, f in zip(pos[b], frames) if 0 <= f < 3]
      rest = sorted(int(p) for p, f in zip(pos[b], frames) if f >= 3)
      assert sink == list(range(len(sink)))
      assert rest == list(range(rest[0], rest[0] + len(rest))) if rest else True
      if rest:
        assert rest[-1] + 1 == t["chunk_positions"][b, 0]


def test_invalid_settings():
  with pytest.raises(ValueError, match="rope_length"):
    SlowFastPolicy(rope_length=10).validate(F)
  with pytest.raises(ValueError, match="mode"):  # the two modes are two policies; a memory block names one
    policy_from_dict({"policy": "slow_fast", "mode": "fast"})


def upstream_before_a_switch(policy, **rollout_kw):
  """A small random model under `policy`, 4 chunks run with one prompt: (model, rollout, the old and new prompts'
  text, the state before the chunk at frame 12, the output frames so far [1, 18, 4, 4, 16])."""
  import dataclasses
  from flax import nnx
  from rf_jax.config import get_preset
  from rf_jax.model import CausalWanDiT
  from rf_jax.sampling import Rollout, Sampler
  cfg = dataclasses.replace(get_preset("tiny"), dim=32, ffn_dim=64, num_heads=2, freq_dim=16, text_dim=8, text_len=4)
  model = CausalWanDiT(cfg, rngs=nnx.Rngs(0))
  r = Rollout(model, policy, Sampler.from_steps(), batch=1, latent_hw=(4, 4), frames=18, **rollout_kw)
  rng = np.random.default_rng(0)
  old, new = (r.text_kv(jnp.asarray(rng.normal(size=(1, 4, 8)), jnp.float32)) for _ in range(2))
  state, history = r.init_state(), np.zeros((1, 18, 4, 4, 16), np.float32)
  for j in range(4):
    state, out = r.step(state, old, j, *r.noise(jax.random.key(1), j))
    history[:, 3 * j:3 * j + 3] = np.asarray(out.latents)
  return model, r, old, new, state, history


def test_upstream_mode_re_keys_the_entries_each_layer_holds_at_a_switch():
  """slow_fast upstream, recache all_memory: the frames re-run are every frame any layer holds (here layer 1 is made
  to hold another slow frame than layer 0); afterwards each layer's slots hold the keys and values of their own
  frame from one forward of those frames with the new prompt (the DiT called directly, at the positions the policy
  documents: the sink at its frames, the rest in frame order up to just before the switch chunk's first position),
  turned to frame 0 as the cache keeps them; slots of frames that were not re-run and the bookkeeping are unchanged."""
  from rf_jax.memory import SlowFastUpstreamPolicy
  from rf_jax.memory.reservoir import stored_kv
  policy = SlowFastUpstreamPolicy(sink_frames=1, slow_frames=2, fast_frames=6, rope_length=12, threshold=2.0)
  model, r, old, new, state, history = upstream_before_a_switch(policy, recache="all_memory", global_sink=False)
  sampler = r.sampler
  table = np.asarray(state.table).copy()
  assert (table[0] == table[1]).all()
  held = set(table[table >= 0].tolist())
  other = min(set(range(12)) - held)
  table[1, 1] = other  # layer 1's first slow slot now "holds" a frame no other slot holds
  state = state._replace(table=jnp.asarray(table))
  frames = r.recache_frames(state, 12)
  assert sorted(f for f in frames.tolist() if f >= 0) == sorted(held | {other})
  before = jax.tree.map(np.asarray, state)
  recent = r.gather_frames(history, frames)
  state, _, info = r.recache_call(state, new, recent, 12, frames=frames)
  after = jax.tree.map(np.asarray, state)
  _, trace = r.step(jax.tree.map(jnp.asarray, after), new, 4, *r.noise(jax.random.key(1), 4))
  first = int(np.asarray(trace.trace["chunk_positions"]).reshape(-1)[0])
  # the positions the policy documents, computed here
  live = [f for f in frames.tolist() if f >= 0]
  rest = [f for f in live if f >= 1]
  pos = {f: (f if f < 1 else max(1, first - len(rest) + rest.index(f))) for f in live}
  w = len(frames)
  frame_pos = jnp.asarray([pos.get(f, 0) for f in frames.tolist()], jnp.int32)
  keys = np.repeat(frames >= 0, 4)  # 4 tokens per frame
  mask = jnp.asarray(np.broadcast_to(keys[None, :], (w * 4, w * 4)))
  ctx_t = jnp.full((1, w), sampler.context_noise, jnp.float32)
  _, kv = model(jnp.asarray(recent), ctx_t, new, frame_pos=frame_pos, self_mask=mask, memory=None)
  want = stored_kv(kv, jnp.zeros((w,), jnp.int32), (2, 2))  # [L, B, N, W, Q, H]
  for layer in range(2):
    for slot, f in enumerate(table[layer].tolist()):
      if f < 0:
        continue
      i = frames.tolist().index(f)
      np.testing.assert_allclose(after.k[layer, :, :, slot], np.asarray(want.k)[layer, :, :, i], atol=2e-5)
      np.testing.assert_allclose(after.v[layer, :, :, slot], np.asarray(want.v)[layer, :, :, i], atol=2e-5)
  for name in ("table", "count", "rep", "has_rep", "local_end"):
    np.testing.assert_array_equal(getattr(after, name), getattr(before, name))
  assert sorted(int(x) for x, k in zip(np.asarray(info["frames"]).reshape(-1), np.asarray(info["keys"]).reshape(-1))
                if k) == sorted(held | {other})


def test_upstream_mode_keeps_a_global_sink_at_a_switch():
  """With LongLive's global sink (the default) and the fast window past the sink, the upstream re-cache leaves the
  sink slots as they were in every layer and re-keys the others; the video after the switch is finite and differs
  from a switch without a re-cache."""
  from rf_jax.memory import SlowFastUpstreamPolicy
  from rf_jax.sampling import PromptSchedule, Rollout, Sampler
  policy = SlowFastUpstreamPolicy(sink_frames=2, slow_frames=2, fast_frames=6, rope_length=12, threshold=2.0)
  model, r, old, new, state, history = upstream_before_a_switch(policy)
  assert r.recache.value == "all_memory" and r.global_sink
  before = jax.tree.map(np.asarray, state)
  frames = r.recache_frames(state, 12)
  state, _, info = r.recache_call(state, new, r.gather_frames(history, frames), 12, frames=frames)
  after = jax.tree.map(np.asarray, state)
  np.testing.assert_array_equal(after.k[:, :, :, :2], before.k[:, :, :, :2])  # the sink slots
  np.testing.assert_array_equal(after.v[:, :, :, :2], before.v[:, :, :, :2])
  held = before.table >= 0  # [L, R]
  moved = np.abs(after.k - before.k).max(axis=(1, 2, 4, 5))  # [L, R]
  # layer 1's keys see the prompt (through layer 0's cross-attention): every held slot after the sink moves. Layer
  # 0's keys see only the latents, so its fast slots (the clean refill's keys) are re-keyed to the same values, and
  # its slow slots move because upstream promoted them from a noisy call.
  assert (moved[1, 2:][held[1, 2:]] > 1e-4).all() and (moved[:, 2:][~held[:, 2:]] == 0).all()
  assert (moved[0, 2:4] > 1e-4).all() and np.allclose(moved[0, 4:], 0)
  keyed = sorted(int(f) for f, k in zip(np.asarray(info["frames"]), np.asarray(info["keys"])) if k)
  assert keyed == sorted(set(before.table[before.table >= 2].tolist()))
  ctx = np.random.default_rng(1).normal(size=(2, 1, 4, 8)).astype(np.float32)  # [K, B, P, D]: two prompts
  runs = [Rollout(model, policy, Sampler.from_steps(), batch=1, latent_hw=(4, 4), frames=18, recache=rc).run(
      ctx, key=jax.random.key(0), schedule=PromptSchedule((12,)))[0] for rc in ("all_memory", "none")]
  assert np.isfinite(runs[0]).all() and np.abs(runs[0][:, 12:] - runs[1][:, 12:]).max() > 1e-4
  np.testing.assert_array_equal(runs[0][:, :12], runs[1][:, :12])
