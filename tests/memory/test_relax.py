"""Relax Forcing's selection on synthetic memories, against the spec's candidate table and an independent score."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rf_jax.memory import Chunk, RelaxPolicy, candidate_table
from rf_jax.memory.relax import live_ring
from rf_jax.memory.reservoir import Geometry, init_reservoir, stored_kv, write_frames
from rf_jax.model.attention import FrameKV

F = 3


def random_memory(policy, frames, batch=1, seed=0, layers=2, q=3, n=2, h=8):
  """A reservoir after `frames` frames of random keys (as the policy would hold it), plus every frame's keys."""
  geom = Geometry(layers, batch, q, n, h, F, frames + F)
  res = init_reservoir(geom, policy.capacity(F))
  rng = np.random.default_rng(seed)
  keys = rng.normal(size=(layers, batch, frames, q, n, h)).astype(np.float32)
  keys += rng.normal(size=(1, batch, frames, 1, 1, h)).astype(np.float32)  # a per-frame direction
  for c in range(0, frames, F):
    kv = FrameKV(jnp.asarray(keys[:, :, c:c + F]), jnp.asarray(keys[:, :, c:c + F] * 2))
    res = write_frames(res, kv, c, policy.sink_frames, (1, q))
  return res, keys


@functools.lru_cache(maxsize=None)
def selector(policy):
  def run(params, res, c):
    chunk = Chunk(c, F, (1, res.k.shape[4]))
    res, ctx = policy.begin_chunk(params, res, chunk)
    return policy.call_view(params, res, ctx, chunk).memory, ctx.trace
  return jax.jit(run)


def select(policy, res, c):
  view, trace = selector(policy)(policy.params(), res, jnp.int32(c))
  return view, jax.tree.map(np.asarray, trace)


# memory_methods.md §1.4 (reservoir 120): chunk -> (middle frames, candidate offsets from c)
SPEC_TABLE = {2: (3, [-3]), 3: (6, [-4, -3]), 4: (9, [-6, -5, -4, -3]), 20: (57, [-30, -23, -16, -9]),
              39: (114, [-58, -44, -30, -16]), 45: (114, [-58, -44, -30, -16])}


@pytest.mark.parametrize("chunk", sorted(SPEC_TABLE))
def test_candidate_schedule_matches_the_spec_table(chunk):
  policy = RelaxPolicy()
  c = chunk * F
  res, _ = random_memory(policy, c, layers=1, q=1, n=1, h=2)
  _, trace = select(policy, res, c)
  n, offsets = SPEC_TABLE[chunk]
  assert not trace["dense"]
  assert int(trace["num_middle"]) == n
  assert [int(x) - c for x in trace["candidates"] if x >= 0] == offsets


def test_first_chunks_attend_densely_at_true_positions():
  policy = RelaxPolicy()
  for chunk, n in ((0, 0), (1, 3)):
    res, _ = random_memory(policy, chunk * F, layers=1, q=1, n=1, h=2)
    view, trace = select(policy, res, chunk * F)
    assert trace["dense"]
    frames = [int(x) for x in trace["memory_frames"][0] if x >= 0]
    assert frames == list(range(n)) and [int(x) for x in trace["memory_positions"][0] if x >= 0] == frames


def test_candidate_table_rule():
  t = candidate_table(30, 4)
  assert t[15].tolist() == [7, 8, 10, 12]  # linspace(7, 14, 5) = 7, 8.75, 10.5, 12.25, 14 -> truncated, last dropped
  assert t[12].tolist() == [6, 7, 8, 9]
  assert t[3].tolist() == [1, -1, -1, -1]  # C == 1: only n // 2
  assert t[0].tolist() == [-1] * 4


@pytest.mark.parametrize("positions", ["hybrid", "absolute"])
def test_choice_is_the_argmax_of_an_independent_score_and_the_view_is_sink_history_tail(positions):
  policy = RelaxPolicy(reservoir_frames=24, positions=positions, lam=1.5)
  for c in (6, 12, 27, 45):
    res, keys = random_memory(policy, c, seed=c)
    view, trace = select(policy, res, c)
    proto = lambda frames: (lambda m: m / np.linalg.norm(m))(  # noqa: E731
        keys[0, 0, frames].astype(np.float64).mean(axis=(0, 1)).mean(axis=0))
    sink, tail = proto([0, 1]), proto([c - 1])
    cands = [int(x) for x in trace["candidates"] if x >= 0]
    scores = [proto([h]) @ sink - 1.5 * (proto([h]) @ tail) for h in cands]
    np.testing.assert_allclose(trace["scores"][0, :len(cands)], scores, atol=1e-5)
    chosen = cands[int(np.argmax(scores))]
    assert trace["history"][0].tolist() == [chosen]
    assert trace["memory_frames"][0].tolist() == [0, 1, chosen, c - 1]  # the tail is the previous frame
    expected_pos = [c - 4, c - 3, c - 2, c - 1] if positions == "hybrid" else [0, 1, chosen, c - 1]
    assert trace["memory_positions"][0].tolist() == expected_pos
    # the view's slot table points at the stored keys of exactly those frames, in every layer (keys rotated at
    # their frame index, head-major); hybrid turns the sink and history by the distance they move, the tail not
    slots = np.asarray(view.slots)[0]
    frames = [0, 1, chosen, c - 1]
    want = stored_kv(FrameKV(jnp.asarray(keys[:, :, frames]), jnp.asarray(2 * keys[:, :, frames])),
                     jnp.asarray(frames), (1, keys.shape[3]))
    np.testing.assert_array_equal(np.take(np.asarray(view.k)[:, 0], slots, axis=2), np.asarray(want.k)[:, 0])
    np.testing.assert_array_equal(np.take(np.asarray(view.v)[:, 0], slots, axis=2), np.asarray(want.v)[:, 0])
    shift = None if view.shift is None else np.asarray(view.shift)[0].tolist()
    assert shift == ([(c - 4) - 0, (c - 3) - 1, (c - 2) - chosen, 0] if positions == "hybrid" else None)


@pytest.mark.parametrize("reservoir,sink,tail,candidates", [(120, 2, 1, 4), (24, 2, 1, 4), (30, 3, 2, 2), (13, 1, 1, 3)])
def test_the_live_ring_holds_every_frame_a_chunk_reads(reservoir, sink, tail, candidates):
  """The reservoir keeps the sink and only the frames a chunk can still read: for 120 frames, c-58 ... c-1 (the
  spec's oldest candidate is c-58), 60 slots instead of upstream's 117. Every frame a view shows and every candidate
  scored must sit in its slot, over three turns of the upstream cache."""
  policy = RelaxPolicy(reservoir_frames=reservoir, sink_frames=sink, tail_frames=tail, num_candidates=candidates)
  if reservoir == 120:
    assert policy.capacity(F) == 2 + 58 and live_ring(120, F, 2, 1, 4) == 58
  res, _ = random_memory(policy, 0, layers=1, q=1, n=1, h=2)
  rng = np.random.default_rng(0)
  for c in range(0, 3 * reservoir + 3 * F, F):
    view, trace = select(policy, res, c)
    held = np.asarray(res.frame)[0]
    shown = trace["memory_frames"][0]
    slots = np.asarray(view.slots)[0]
    assert all(held[s] == f for s, f in zip(slots, shown) if f >= 0), (c, shown, held)
    cands = [int(x) for x in trace["candidates"] if x >= 0]
    assert set(cands) <= set(held.tolist()), (c, cands, held)
    kv = jnp.asarray(rng.normal(size=(1, 1, F, 1, 1, 2)), jnp.float32)
    res = write_frames(res, FrameKV(kv, kv), c, sink, (1, 1))


def test_batch0_applies_sample_zeros_choice_and_per_sample_chooses_each():
  per_sample = RelaxPolicy(reservoir_frames=24)
  batch0 = RelaxPolicy(reservoir_frames=24, selection="batch0")
  differs = 0
  for c in (12, 15, 18, 21, 24, 27):
    res, _ = random_memory(per_sample, c, batch=2, seed=100 + c)
    _, own = select(per_sample, res, c)
    _, shared = select(batch0, res, c)
    assert shared["history"][:, 0].tolist() == [own["history"][0, 0]] * 2
    differs += int(own["history"][0, 0] != own["history"][1, 0])
  assert differs > 0  # the data really did disagree somewhere


def test_lambda_is_traced_not_static():
  policy = RelaxPolicy(reservoir_frames=24)
  res, _ = random_memory(policy, 21)
  fn = selector(policy.static_part())
  before = fn._cache_size()
  a = fn({"lam": jnp.float32(0.0)}, res, jnp.int32(21))[1]["scores"]
  b = fn({"lam": jnp.float32(5.0)}, res, jnp.int32(21))[1]["scores"]
  assert fn._cache_size() - before == 1 and not np.allclose(a, b, equal_nan=True)


def test_invalid_settings_name_the_setting():
  with pytest.raises(ValueError, match="reservoir_frames"):
    RelaxPolicy(reservoir_frames=7).validate(F)
  with pytest.raises(ValueError, match="positions"):
    RelaxPolicy(positions="rotary").validate(F)
