"""Memory attention on GPU: a Pallas (Triton) flash-attention kernel that reads the memory through its slot table.

One program handles `block_q` queries of one (sample, head). It streams, with an online softmax:
  1. the valid memory entries only (the slot table is compacted, valid entries first, and the loop runs to the
     sample's count: a warm-up chunk or a half-filled memory costs less), each entry's frame read in place from the
     head-major reservoir at `slot[e]` (one contiguous [Q, H] block per head) and, when the policy moved it, turned
     by its extra RoPE angles on the fly (no gathered or rotated copy);
  2. the chunk's own keys (already rotated), the whole chunk or, for the training mask, only the key blocks the
     block-causal structure allows.

RoPE turns interleaved pairs (2j, 2j+1). The kernel loads even and odd head-dim lanes as two strided halves, rotates
the keys' halves, and computes q.k as q_even.k_even + q_odd.k_odd: the same sum, with no lane shuffles.

Letters: B batch, T queries, S chunk keys, R reservoir slots, M memory entries, Q tokens per frame, N heads,
H head dim, h = H/2.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from rf_jax.ops.masks import BlockCausal
from rf_jax.ops.kernels.reference_vjp import with_reference_vjp
from rf_jax.ops.memory import SlotMemory, compact_entries

Array = jax.Array

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)  # masked logit: finite, so exp2(mask - max) is 0, never NaN
_LOG2E = math.log2(math.e)


def _update(carry, logits, v):
  """One online-softmax step (base 2): logits [bq, bk] f32, v [bk, H]."""
  acc, m_prev, l_prev = carry
  m_new = jnp.maximum(m_prev, jnp.max(logits, axis=1))
  alpha = jnp.exp2(m_prev - m_new)
  p = jnp.exp2(logits - m_new[:, None])
  l_new = alpha * l_prev + jnp.sum(p, axis=1)
  acc = acc * alpha[:, None] + plgpu.dot(p.astype(v.dtype), v, allow_tf32=False)
  return acc, m_new, l_new


def _halves(ref, rows, mask, strided: bool):
  """Even and odd head-dim lanes of ref[rows, :] as two [rows, H/2] arrays (zeros where mask is False).

  On the GPU these are two strided loads. The CPU interpreter cannot discharge strided loads, so in interpret
  mode the rows are loaded whole and split with array slicing: the same values.
  """
  if strided:
    half = ref.shape[-1] // 2
    return (plgpu.load(ref.at[rows, pl.ds(0, half, stride=2)], mask=mask, other=0.0),
            plgpu.load(ref.at[rows, pl.ds(1, half, stride=2)], mask=mask, other=0.0))
  x = plgpu.load(ref.at[rows, :], mask=mask, other=0.0)
  return x[:, 0::2], x[:, 1::2]


def _dot_t(a, b):
  """a [m, k] @ b[n, k]^T in float32."""
  return plgpu.dot(a, b, trans_b=True, allow_tf32=False)


def _kernel(*refs, has_memory: bool, rotate: bool, causal: BlockCausal | None, num_queries: int, num_keys: int,
            frame_tokens: int, head_dim: int, block_q: int, block_k: int, qk_scale: float, strided: bool):
  if has_memory:
    if rotate:
      count_ref, entry_ref, slot_ref, q_ref, k_ref, v_ref, mk_ref, mv_ref, cos_ref, sin_ref, o_ref = refs
    else:
      count_ref, entry_ref, slot_ref, q_ref, k_ref, v_ref, mk_ref, mv_ref, o_ref = refs
  else:
    q_ref, k_ref, v_ref, o_ref = refs
  i = pl.program_id(0)
  q0 = i * block_q
  rows = q0 + jnp.arange(block_q)
  row_ok = (rows < num_queries)[:, None]
  q_rows = pl.ds(q0, block_q)
  qe, qo = _halves(q_ref, q_rows, row_ok, strided)  # [bq, h] each
  dtype = qe.dtype
  carry = (jnp.zeros((block_q, head_dim), jnp.float32), jnp.full((block_q,), _NEG, jnp.float32),
           jnp.zeros((block_q,), jnp.float32))

  if has_memory:
    blocks = pl.cdiv(frame_tokens, block_k)  # key blocks per frame

    def memory_step(j, carry):
      e = lax_div(j, blocks)
      kb = j - e * blocks
      slot, entry = slot_ref[e], entry_ref[e]
      k0 = kb * block_k
      cols = k0 + jnp.arange(block_k)
      ok = cols < frame_tokens
      krows = pl.ds(k0, block_k)
      ke, ko = _halves(mk_ref.at[slot], krows, ok[:, None], strided)  # [bk, h] each
      if rotate:
        ke, ko = ke.astype(jnp.float32), ko.astype(jnp.float32)
        c = plgpu.load(cos_ref.at[entry, krows, :], mask=ok[:, None], other=0.0)  # [bk, h] f32
        s = plgpu.load(sin_ref.at[entry, krows, :], mask=ok[:, None], other=0.0)
        re, ro = (ke * c - ko * s).astype(dtype), (ke * s + ko * c).astype(dtype)
      else:
        re, ro = ke.astype(dtype), ko.astype(dtype)
      logits = (_dot_t(qe, re) + _dot_t(qo, ro)) * qk_scale  # [bq, bk]
      logits = jnp.where(ok[None, :], logits, _NEG)
      v = plgpu.load(mv_ref.at[slot, krows, :], mask=ok[:, None], other=0.0)  # [bk, H]
      return _update(carry, logits, v.astype(dtype))

    carry = jax.lax.fori_loop(0, count_ref[0] * blocks, memory_step, carry)

  if causal is None:
    lo, hi = 0, pl.cdiv(num_keys, block_k)
  else:
    last = jnp.minimum(q0 + block_q, num_queries) - 1
    start, _ = causal.key_range(q0)
    _, end = causal.key_range(last)
    lo = lax_div(jnp.maximum(jnp.minimum(start, q0), 0), block_k)
    hi = lax_div(jnp.minimum(end, num_keys) + block_k - 1, block_k)

  def chunk_step(j, carry):
    k0 = j * block_k
    cols = k0 + jnp.arange(block_k)
    ok = cols < num_keys
    krows = pl.ds(k0, block_k)
    ke, ko = _halves(k_ref, krows, ok[:, None], strided)
    logits = (_dot_t(qe, ke.astype(dtype)) + _dot_t(qo, ko.astype(dtype))) * qk_scale
    allowed = ok[None, :]
    if causal is not None:
      start, end = causal.key_range(rows)
      allowed = allowed & (((cols[None, :] >= start[:, None]) & (cols[None, :] < end[:, None]))
                           | (cols[None, :] == rows[:, None]))
    logits = jnp.where(allowed, logits, _NEG)
    v = plgpu.load(v_ref.at[krows, :], mask=ok[:, None], other=0.0)
    return _update(carry, logits, v.astype(dtype))

  acc, _, l = jax.lax.fori_loop(lo, hi, chunk_step, carry)
  out = acc / l[:, None]
  plgpu.store(o_ref.at[q_rows, :], out.astype(o_ref.dtype), mask=row_ok)


def lax_div(a, b):
  """Integer division that lowers inside Triton kernels (operands may be traced scalars)."""
  return jax.lax.div(a, jnp.asarray(b, jnp.asarray(a).dtype))


def _check(q: Array, k: Array, memory: SlotMemory | None, mask) -> None:
  h = q.shape[-1]
  if h % 2 or (h // 2) & (h // 2 - 1) or h < 32:
    raise ValueError(f"pallas_gpu attention: head dim {h} unsupported; it must be 2 * a power of two, >= 32")
  if mask is not None and not isinstance(mask, BlockCausal):
    raise ValueError("pallas_gpu attention takes no dense mask; pass None or a BlockCausal structure "
                     "(or use the 'reference' or 'cudnn' backend)")
  if isinstance(mask, BlockCausal) and q.shape[1] != k.shape[1]:
    raise ValueError(f"BlockCausal needs as many queries as chunk keys, got {q.shape[1]} and {k.shape[1]}")
  if memory is not None and (memory.k.shape[1], memory.k.shape[-1]) != q.shape[-2:]:
    raise ValueError(f"memory keys {memory.k.shape} ([B, N, R, Q, H]) do not match queries {q.shape} in heads/head "
                     "dim")


@functools.partial(jax.jit, static_argnames=("mask", "block_q", "block_k", "num_warps", "num_stages", "interpret"))
def _forward(q, k, v, memory, mask, *, block_q, block_k, num_warps, num_stages, interpret):
  b, t, n, h = q.shape
  s = k.shape[1]
  frame_tokens = 0 if memory is None else memory.frame_tokens
  kernel = functools.partial(
      _kernel, has_memory=memory is not None, rotate=memory is not None and memory.cos is not None, causal=mask, num_queries=t, num_keys=s, frame_tokens=frame_tokens,
      head_dim=h, block_q=block_q, block_k=block_k, qk_scale=h ** -0.5 * _LOG2E,
      strided=not interpret)
  per_head = lambda length: pl.BlockSpec((None, length, None, h), lambda i, bi, ni: (bi, 0, ni, 0))  # noqa: E731
  in_specs = [per_head(t), per_head(s), per_head(s)]
  args = [q, k, v]
  if memory is not None:
    r, m = memory.k.shape[2], memory.num_entries
    count, entry, slot = compact_entries(memory)
    reservoir = pl.BlockSpec((None, None, r, frame_tokens, h), lambda i, bi, ni: (bi, ni, 0, 0, 0))  # one head
    angles = pl.BlockSpec((None, m, frame_tokens, h // 2), lambda i, bi, ni: (bi, 0, 0, 0))
    table = pl.BlockSpec((None, m), lambda i, bi, ni: (bi, 0))
    in_specs = [pl.BlockSpec((None, 1), lambda i, bi, ni: (bi, 0)), table, table, *in_specs, reservoir, reservoir]
    args = [count[:, None], entry, slot, *args, memory.k, memory.v]
    if memory.cos is not None:
      in_specs += [angles, angles]
      args += [memory.cos.astype(jnp.float32), memory.sin.astype(jnp.float32)]
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      grid=(pl.cdiv(t, block_q), b, n),
      in_specs=in_specs,
      out_specs=per_head(t),
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret,
      name="rf_memory_attention",
  )(*args)


def memory_attention(q: Array, k: Array, v: Array, memory: SlotMemory | None = None,
                     mask: BlockCausal | None = None, *, block_q: int = 128, block_k: int = 64,
                     num_warps: int | None = None, num_stages: int = 2, interpret: bool = False) -> Array:
  """Attention of queries to [valid memory entries..., chunk keys...] (see `rf_jax.ops.attention`).

  q: [B, T, N, H] and k, v: [B, S, N, H], RoPE already applied; memory entries are turned by their extra rotation
  in the kernel. Differentiable: the backward pass is the dense oracle's (recomputed in XLA), correct but not fused.
  """
  _check(q, k, memory, mask)
  if num_warps is None:
    num_warps = 4 if q.shape[-1] <= 64 else 8
  return with_reference_vjp(functools.partial(_forward, mask=mask, block_q=block_q, block_k=block_k,
                                               num_warps=num_warps, num_stages=num_stages, interpret=interpret),
                             mask)(q, k, v, memory)
