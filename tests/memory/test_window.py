"""Self-Forcing's window as a policy: which frames a chunk sees, and where its position schemes put them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rf_jax.memory import Chunk, WindowPolicy, policy_from_dict
from rf_jax.memory.reservoir import Geometry
from rf_jax.model.attention import FrameKV

F = 3
GEOM = Geometry(1, 1, 1, 1, 2, F, 60)


def views(policy, frames=60):
  """Memory frames and the positions each chunk sees them at (batch element 0, from the chunk's trace), the chunk's
  positions, and the call view's shifts of those frames."""
  res = policy.init(GEOM)
  out = []
  chunk = lambda c: Chunk(c, F, (1, 1))  # noqa: E731
  view_fn = jax.jit(lambda r, c: policy.call_view(policy.params(), r, None, chunk(c)))
  end_fn = jax.jit(lambda r, kv, c: policy.end_chunk(policy.params(), r, None, kv, chunk(c)))
  for c in range(0, frames, F):
    v = view_fn(res, jnp.int32(c))
    kv = FrameKV(jnp.zeros((1, 1, F, 1, 1, 2)), jnp.zeros((1, 1, F, 1, 1, 2)))
    res_before = res
    res, tr = end_fn(res, kv, jnp.int32(c))
    valid = np.asarray(tr["memory_frames"][0]) >= 0
    shift = None if v.memory.shift is None else np.asarray(v.memory.shift[0])[valid].tolist()
    assert np.asarray(v.chunk_pos).tolist() == [c, c + 1, c + 2]  # rotated at its frames, as stored keys are
    assert np.array_equal(np.asarray(res_before.frame[0]), np.asarray(tr["memory_frames"][0]))
    out.append((np.asarray(tr["memory_frames"][0])[valid].tolist(), np.asarray(tr["memory_positions"][0])[valid].tolist(),
                np.asarray(tr["chunk_positions"]).tolist(), shift))
  return out


@pytest.mark.parametrize("window,sink", [(6, 2), (5, 1), (21, 0), (12, 3), (-1, 0)])
def test_a_chunk_sees_the_sink_and_the_most_recent_frames_of_upstreams_cache(window, sink):
  for j, (frames, pos, chunk_pos, shift) in enumerate(views(WindowPolicy(window_frames=window, sink_frames=sink))):
    c = j * F
    assert shift is None  # absolute positions: every frame is read as stored
    # upstream: the cache holds `window` frames including the chunk: the sink and then the newest others.
    recent = c if window == -1 else window - F - min(sink, c)
    expected = sorted(set(range(min(sink, c))) | set(range(max(min(sink, c), c - recent), c)))
    assert sorted(frames) == expected, (j, frames)
    assert sorted(pos) == expected and chunk_pos == [c, c + 1, c + 2]  # absolute positions


def test_relative_position_schemes():
  reloc = views(WindowPolicy(window_frames=12, sink_frames=3, positions="relocated_sink"))
  rel = views(WindowPolicy(window_frames=12, sink_frames=3, positions="end_aligned"))
  frames, pos, chunk_pos, shift = reloc[10]  # c = 30: memory = sink 0..2 + frames 24..29
  by_frame = dict(zip(frames, pos))
  assert [by_frame[f] for f in (0, 1, 2)] == [21, 22, 23] and by_frame[24] == 24 and chunk_pos == [30, 31, 32]
  frames, pos, chunk_pos, _ = rel[10]
  by_frame = dict(zip(frames, pos))
  assert [by_frame[f] for f in (0, 1, 2, 24, 29)] == [0, 1, 2, 3, 8] and chunk_pos == [9, 10, 11]
  for (fa, pa, ca, sa), (fb, pb, cb, sb) in zip(reloc[3:], rel[3:]):  # once full, the two differ by one shift
    offset = ca[0] - cb[0]
    assert fa == fb and [p - offset for p in pa] == pb
    assert sa == sb  # and the keys are turned alike
  for j, (frames, pos, chunk_pos, shift) in enumerate(reloc + rel):  # only the sink moves from where it is stored
    c = (j % len(reloc)) * F
    assert shift == [(p - chunk_pos[0]) - (f - c) for f, p in zip(frames, pos)]
    assert all(s == 0 for f, s in zip(frames, shift) if f >= 3)


def test_policy_from_dict_errors_name_the_key():
  assert policy_from_dict({"policy": "window", "window_frames": 6, "sink_frames": 2}) == WindowPolicy(6, 2)
  with pytest.raises(ValueError, match="'history_frames'"):
    policy_from_dict({"policy": "window", "history_frames": 1})
  with pytest.raises(ValueError, match="unknown policy 'lru'"):
    policy_from_dict({"policy": "lru"})
  with pytest.raises(ValueError, match="window_frames=4"):
    WindowPolicy(window_frames=4, sink_frames=2).validate(F)


def test_relative_schemes_re_cache_where_the_next_chunk_sees_the_frames():
  """A switch under a relative scheme re-runs the window at the positions the switch chunk's view shows. Without a
  sink every scheme is one shift of the absolute one, so the re-cached video is the same to rounding; with a sink
  the relocated sink moves and the video changes, but the frames re-run are LongLive's."""
  import dataclasses
  import jax
  from flax import nnx
  from rf_jax.config import get_preset
  from rf_jax.model import CausalWanDiT
  from rf_jax.sampling import PromptSchedule, Rollout, Sampler
  small = dataclasses.replace(get_preset("tiny"), dim=32, ffn_dim=64, num_heads=2, freq_dim=16, text_dim=8, text_len=4)
  model = CausalWanDiT(small, rngs=nnx.Rngs(2))
  ctx = np.random.default_rng(3).normal(size=(2, 1, 4, model.config.text_dim)).astype(np.float32)
  schedule = PromptSchedule((12,))

  def run(positions, sink):
    r = Rollout(model, WindowPolicy(window_frames=9, sink_frames=sink, positions=positions), Sampler.from_steps(),
                batch=1, latent_hw=(4, 4), frames=21)
    latents, _ = r.run(ctx, key=jax.random.key(0), schedule=schedule)
    return latents, r.switches[0]["recached_frames"]

  absolute, frames = run("absolute", 0)
  assert frames == list(range(3, 12))
  moved, moved_frames = run("end_aligned", 0)  # (relocated_sink without a sink is the absolute scheme itself)
  assert moved_frames == frames
  np.testing.assert_allclose(moved, absolute, atol=2e-5)
  sunk, sunk_frames = run("relocated_sink", 2)
  assert sunk_frames == list(range(5, 12))  # the global sink (frames 0, 1) keeps its keys
  assert np.isfinite(sunk).all() and np.abs(sunk[:, 12:] - absolute[:, 12:]).max() > 1e-4
