"""The Pallas TPU (Mosaic) memory-attention kernel against the dense oracle, in interpret mode on CPU.

No TPU was available to this project: these tests check the kernel's semantics (scalar-prefetched slot table,
skipped steps, fused RoPE by lane rolls, block-causal skipping), not Mosaic's acceptance of its layouts.
"""

import functools

import jax.numpy as jnp
import numpy as np
import pytest

from attention_cases import TOLERANCE, make_problem, rel_err
from rf_jax.ops.kernels import tpu_attention
from rf_jax.ops import BlockCausal

interpret = functools.partial(tpu_attention.memory_attention, block_q=16, block_k=8, interpret=True)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("entries", [1, 3, 6])
def test_memory_attention_matches_reference(dtype, head_dim, entries):
  q, k, v, mem = make_problem(frame_tokens=16, head_dim=head_dim, entries=entries, reservoir=max(entries, 5) + 1,
                              dtype=dtype, seed=entries)
  assert rel_err(interpret(q, k, v, mem), q, k, v, mem, None) <= TOLERANCE[dtype]


def test_without_memory_pre_rotated_and_empty():
  q, k, v, _ = make_problem(frame_tokens=16, entries=0)
  assert rel_err(interpret(q, k, v, None), q, k, v, None, None) <= 1e-5
  q, k, v, mem = make_problem(frame_tokens=16, rotated=True, seed=3)
  assert rel_err(interpret(q, k, v, mem), q, k, v, mem, None) <= 1e-5
  q, k, v, mem = make_problem(frame_tokens=16, valid=np.zeros((2, 3), bool), seed=4)
  np.testing.assert_allclose(interpret(q, k, v, mem), interpret(q, k, v, None), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mask", [BlockCausal(16, 1), BlockCausal(16, 2), BlockCausal(16, 1, window_frames=2)])
def test_block_causal_training_mask(mask):
  q, k, v, _ = make_problem(frame_tokens=16, entries=0, frames=4, seed=5)
  assert rel_err(interpret(q, k, v, None, mask), q, k, v, None, mask) <= 1e-5


def test_frame_tokens_without_a_multiple_of_8_divisor_use_whole_frames():
  # 1560 = 8 * 3 * 5 * 13 and 4680 = 3 * 1560: the largest multiples of 8 dividing them under the targets
  assert tpu_attention.block_size(1560, 512) == 312 and tpu_attention.block_size(4680, 256) == 120
  assert tpu_attention.block_size(12, 8) == 12
  q, k, v, mem = make_problem(frame_tokens=12, seed=6)
  assert rel_err(interpret(q, k, v, mem), q, k, v, mem, None) <= 1e-5


def test_dense_mask_is_refused_by_name():
  q, k, v, mem = make_problem(frame_tokens=16)
  with pytest.raises(ValueError, match="dense mask"):
    interpret(q, k, v, mem, jnp.ones((32, 32), bool))
