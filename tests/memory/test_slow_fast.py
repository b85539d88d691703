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
