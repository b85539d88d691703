"""The Pallas GPU memory-attention kernel against the dense oracle: interpret mode on CPU, compiled on a GPU."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_cases import TOLERANCE, make_problem, rel_err
from rf_jax.ops.kernels import gpu_attention
from rf_jax.ops import BlockCausal

interpret = functools.partial(gpu_attention.memory_attention, block_q=16, block_k=16, interpret=True)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("entries", [1, 3, 6])
def test_memory_attention_matches_reference(dtype, head_dim, entries):
  q, k, v, mem = make_problem(head_dim=head_dim, entries=entries, reservoir=max(entries, 5) + 1, dtype=dtype,
                              seed=entries)
  assert rel_err(interpret(q, k, v, mem), q, k, v, mem, None) <= TOLERANCE[dtype]


def test_without_memory_and_with_pre_rotated_memory():
  q, k, v, _ = make_problem(entries=0)
  assert rel_err(interpret(q, k, v, None), q, k, v, None, None) <= 1e-5
  q, k, v, mem = make_problem(rotated=True, seed=3)
  assert rel_err(interpret(q, k, v, mem), q, k, v, mem, None) <= 1e-5


def test_cross_attention_shape_more_keys_than_queries():
  q, _, _, _ = make_problem(entries=0, frames=1)
  _, k, v, _ = make_problem(entries=0, frames=3, seed=1)
  assert rel_err(interpret(q, k, v, None), q, k, v, None, None) <= 1e-5


@pytest.mark.parametrize("mask", [BlockCausal(12, 1), BlockCausal(12, 2), BlockCausal(12, 1, window_frames=2)])
def test_block_causal_training_mask(mask):
  q, k, v, _ = make_problem(entries=0, frames=4, seed=5)
  assert rel_err(interpret(q, k, v, None, mask), q, k, v, None, mask) <= 1e-5


def test_empty_memory_equals_no_memory():
  q, k, v, mem = make_problem(valid=np.zeros((2, 3), bool))
  np.testing.assert_allclose(interpret(q, k, v, mem), interpret(q, k, v, None), rtol=1e-6, atol=1e-6)


def test_gradients_match_reference():
  q, k, v, mem = make_problem(seed=7)
  from rf_jax.ops.oracle import dense_memory_attention
  loss = lambda fn: lambda q, k, v, mk: jnp.sum(jnp.sin(fn(q, k, v, mem._replace(k=mk))))  # noqa: E731
  got = jax.grad(loss(interpret), argnums=(0, 1, 2, 3))(q, k, v, mem.k)
  ref = jax.grad(loss(lambda q, k, v, m: dense_memory_attention(q, k, v, m, None)), argnums=(0, 1, 2, 3))(
      q, k, v, mem.k)
  for g, r in zip(got, ref):
    np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)


def test_bad_inputs_are_named():
  q, k, v, mem = make_problem()
  with pytest.raises(ValueError, match="dense mask"):
    interpret(q, k, v, mem, jnp.ones((24, 24), bool))
  with pytest.raises(ValueError, match="head dim 48"):
    gpu_attention.memory_attention(q[..., :48], k[..., :48], v[..., :48], None, interpret=True)


# ------------------------------------------------------------------------------------------ compiled, on a GPU

@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_compiled_kernel_on_gpu(dtype, head_dim):
  q, k, v, mem = make_problem(frame_tokens=100, heads=4, head_dim=head_dim, reservoir=9, entries=5, dtype=dtype,
                              seed=11)
  assert rel_err(gpu_attention.memory_attention(q, k, v, mem), q, k, v, mem, None) <= TOLERANCE[dtype]
  mask = BlockCausal(100, 1)
  assert rel_err(gpu_attention.memory_attention(q, k, v, None, mask), q, k, v, None, mask) <= TOLERANCE[dtype]
