"""The XLA backend (`rf_jax.ops.reference`) against the dense oracle: random problems, partly valid memories, moved
entries, masks, a prompt bias, stacked layers; and it never reads an invalid memory slot."""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "kernels"))
from attention_cases import TOLERANCE, make_problem, rel_err  # noqa: E402
from rf_jax.ops import BlockCausal, SlotMemory  # noqa: E402
from rf_jax.ops.oracle import dense_attention  # noqa: E402
from rf_jax.ops.reference import BLOCK_KEYS, frames_per_step, memory_attention  # noqa: E402

run = jax.jit(memory_attention, static_argnames=("mask",))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("frame_tokens,entries,rotated", [(12, 3, False), (12, 5, True), (BLOCK_KEYS, 3, False),
                                                          (40, 1, False)])
def test_matches_the_dense_oracle(dtype, frame_tokens, entries, rotated):
  """Frames per loop step: several (12 and 40 tokens) or one (BLOCK_KEYS tokens); some samples' entries invalid."""
  q, k, v, mem = make_problem(batch=3, frame_tokens=frame_tokens, entries=entries, reservoir=6, dtype=dtype,
                              seed=entries + frame_tokens, rotated=rotated)
  assert rel_err(run(q, k, v, mem), q, k, v, mem, None) <= TOLERANCE[dtype]


def test_frames_per_step():
  assert frames_per_step(104, 18) == 1 and frames_per_step(1560, 4) == 1  # the bench and 1.3B shapes: one frame
  assert frames_per_step(16, 18) == 8 and frames_per_step(16, 3) == 3


@pytest.mark.parametrize("mask", [BlockCausal(12, 1), BlockCausal(12, 1, 1)])
def test_block_causal_mask_with_memory(mask):
  q, k, v, mem = make_problem(frames=3, frame_tokens=12, seed=5)
  assert rel_err(run(q, k, v, mem, mask), q, k, v, mem, mask) <= 1e-5


def test_dense_mask_and_key_bias_without_memory():
  q, k, v, _ = make_problem(frame_tokens=12, entries=0, seed=6)
  t = q.shape[1]
  mask = jnp.asarray(np.random.default_rng(0).random((t, t)) < 0.7) | jnp.eye(t, dtype=bool)
  bias = jnp.asarray(np.random.default_rng(1).normal(size=(q.shape[0], t)), jnp.float32)
  got = memory_attention(q, k, v, None, mask, bias)
  want = dense_attention(q, k, v, mask, bias)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_a_merged_key_with_a_log_count_bias_equals_the_repeated_keys():
  """What `TextKV` relies on: one key with bias log(n) attends exactly like n copies of it."""
  q, k, v, _ = make_problem(frame_tokens=8, entries=0, seed=7)
  repeated_k = jnp.concatenate([k, jnp.repeat(k[:, :1], 5, axis=1)], axis=1)
  repeated_v = jnp.concatenate([v, jnp.repeat(v[:, :1], 5, axis=1)], axis=1)
  merged_k, merged_v = jnp.concatenate([k, k[:, :1]], axis=1), jnp.concatenate([v, v[:, :1]], axis=1)
  bias = jnp.zeros(merged_k.shape[:2], jnp.float32).at[:, -1].set(np.log(5))
  np.testing.assert_allclose(np.asarray(memory_attention(q, merged_k, merged_v, key_bias=bias)),
                             np.asarray(dense_attention(q, repeated_k, repeated_v)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frame_tokens", [12, BLOCK_KEYS])
def test_invalid_slots_are_never_read(frame_tokens):
  """Slots of invalid entries (and unused slots) hold NaN: the answer is the clean one, for any count per sample,
  including a sample with no valid entry while another has some, and an entirely empty memory."""
  q, k, v, mem = make_problem(batch=3, frame_tokens=frame_tokens, entries=4, reservoir=6, seed=8)
  valid = np.array([[True, False, True, False], [False, False, False, False], [True, True, True, True]])
  mem = mem._replace(valid=jnp.asarray(valid))
  want = run(q, k, v, mem)
  used = np.zeros((3, 6), bool)
  for b in range(3):
    used[b, np.asarray(mem.slots)[b][valid[b]]] = True
  poison = lambda a: jnp.where(jnp.asarray(used)[:, None, :, None, None], a, jnp.nan)  # noqa: E731
  got = run(q, k, v, mem._replace(k=poison(mem.k), v=poison(mem.v)))
  assert bool(jnp.all(jnp.isfinite(got)))
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  empty = mem._replace(k=jnp.full_like(mem.k, jnp.nan), v=jnp.full_like(mem.v, jnp.nan),
                       valid=jnp.zeros_like(mem.valid))
  got = run(q, k, v, empty)  # another program than no memory at all: equal up to how XLA fused it
  assert bool(jnp.all(jnp.isfinite(got)))
  np.testing.assert_allclose(np.asarray(got), np.asarray(run(q, k, v, None)), rtol=1e-6, atol=1e-6)


def test_a_layer_of_a_stacked_memory_is_read_in_place():
  q, k, v, mem = make_problem(frame_tokens=12, seed=9)
  other = jax.tree.map(lambda a: a + 1.0, (mem.k, mem.v))
  stacked = mem._replace(k=jnp.stack([other[0], mem.k]), v=jnp.stack([other[1], mem.v]), layer=jnp.int32(1))
  np.testing.assert_allclose(np.asarray(run(q, k, v, stacked)), np.asarray(run(q, k, v, mem)), rtol=1e-6,
                             atol=1e-6)
  assert isinstance(stacked.of_layer(), SlotMemory) and stacked.of_layer().k.shape == mem.k.shape


@pytest.mark.parametrize("per_sample", [False, True])
def test_many_queries_run_in_blocks_with_their_mask_rows(monkeypatch, per_sample):
  """A call with more than 2 x QUERY_BLOCK queries (a re-cache) runs them in blocks (the last one padded): the same
  answer as the dense oracle, with a memory and a key-validity mask, shared or per sample."""
  import rf_jax.ops.reference as reference
  monkeypatch.setattr(reference, "QUERY_BLOCK", 10)
  q, k, v, mem = make_problem(batch=2, frames=3, frame_tokens=12, entries=3, seed=9)  # 36 queries: 4 blocks
  t = q.shape[1]
  keys = np.random.default_rng(2).random((2, t)) < 0.6
  keys[:, 0] = True
  mask = jnp.asarray(keys[:, None, None, :] if per_sample else keys[0][None, :].repeat(t, 0))
  got = reference.memory_attention(q, k, v, mem, mask)
  assert rel_err(got, q, k, v, mem, mask) <= 1e-5
