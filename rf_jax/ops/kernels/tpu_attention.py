"""Memory attention on TPU: a Pallas Mosaic flash-attention kernel that reads the memory through its slot table.

The slot table is scalar-prefetched into SMEM, and the BlockSpec index maps read it: grid step j of a query block
fetches frame block j of memory entry e(j) straight from the head-major reservoir at slot[e(j)], all heads at once. Steps past the sample's
valid entries (the table is compacted, valid first) repeat the last fetched block index, so Pallas issues no DMA
for them, and their compute is skipped; so are the chunk-key blocks a block-causal mask rules out. An entry the
policy moved is turned in VMEM by its extra angles with a lane roll (interleaved pairs).

Grid (B, query blocks, memory steps + chunk steps); all N heads of a block are handled by one step (query and chunk
blocks keep [.., N, H] as their two minor dims, memory blocks [N, bm, H]). The online-softmax state lives in VMEM
scratch.

Status: checked in interpret mode on CPU only (no TPU was available to this project); Mosaic may reject a layout
on real hardware. Letters as in `gpu_attention`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from rf_jax.ops.kernels.reference_vjp import with_reference_vjp
from rf_jax.ops.masks import BlockCausal
from rf_jax.ops.memory import SlotMemory, compact_entries

Array = jax.Array

_NEG = -0.7 * float(jnp.finfo(jnp.float32).max)


def block_size(n: int, target: int) -> int:
  """The largest divisor of n that is a multiple of 8 and at most `target`, else n itself (a whole axis)."""
  for size in range(min(target, n) // 8 * 8, 0, -8):
    if n % size == 0:
      return size
  return n


def _kernel(count_ref, entry_ref, slot_ref, *refs, has_memory: bool, rotate: bool, causal: BlockCausal | None,
            num_entries: int, mem_blocks: int, block_q: int, block_k: int, num_heads: int,
            scale: float):
  if has_memory and rotate:
    q_ref, k_ref, v_ref, mk_ref, mv_ref, cos_ref, sin_ref, o_ref, m_sc, l_sc, acc_sc = refs
  elif has_memory:
    q_ref, k_ref, v_ref, mk_ref, mv_ref, o_ref, m_sc, l_sc, acc_sc = refs
  else:
    q_ref, k_ref, v_ref, o_ref, m_sc, l_sc, acc_sc = refs
  b, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  memory_steps = num_entries * mem_blocks

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full(m_sc.shape, _NEG, jnp.float32)
    l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
    acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

  def update(n, logits, v):
    m_prev, l_prev = m_sc[n], l_sc[n]  # [bq, 1]
    m_new = jnp.maximum(m_prev, jnp.max(logits, axis=1, keepdims=True))
    alpha = jnp.exp(m_prev - m_new)
    p = jnp.exp(logits - m_new)
    l_sc[n] = alpha * l_prev + jnp.sum(p, axis=1, keepdims=True)
    acc_sc[n] = acc_sc[n] * alpha + jnp.dot(p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    m_sc[n] = m_new

  def logits_of(q, k):
    return jax.lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32) * scale

  if has_memory:
    @pl.when(j < count_ref[b] * mem_blocks)
    def _memory():
      if rotate:
        c, s = cos_ref[...], sin_ref[...]  # [bm, H] f32: cos per pair, and -sin / +sin on even / odd lanes
        lane = jax.lax.broadcasted_iota(jnp.int32, c.shape, 1)
        even = lane % 2 == 0
      for n in range(num_heads):
        q = q_ref[:, n, :]  # [bq, H]
        k = mk_ref[n]  # [bm, H]
        if rotate:
          kf = k.astype(jnp.float32)
          h = kf.shape[-1]
          swapped = jnp.where(even, pltpu.roll(kf, h - 1, 1), pltpu.roll(kf, 1, 1))  # pairs (2i, 2i+1) swapped
          k = (kf * c + swapped * s).astype(q.dtype)
        update(n, logits_of(q, k.astype(q.dtype)), mv_ref[n].astype(q.dtype))

  jc = j - memory_steps
  lo, hi = _chunk_range(causal, i, block_q, block_k)
  active = jc >= 0
  if causal is not None:
    active = active & (jc >= lo) & (jc < hi)

  @pl.when(active)
  def _chunk():
    rows = i * block_q + jax.lax.broadcasted_iota(jnp.int32, (block_q, block_k), 0)
    cols = jc * block_k + jax.lax.broadcasted_iota(jnp.int32, (block_q, block_k), 1)
    allowed = None
    if causal is not None:
      start, end = causal.key_range(rows)
      allowed = ((cols >= start) & (cols < end)) | (cols == rows)
    for n in range(num_heads):
      q = q_ref[:, n, :]
      logits = logits_of(q, k_ref[:, n, :].astype(q.dtype))
      if allowed is not None:
        logits = jnp.where(allowed, logits, _NEG)
      update(n, logits, v_ref[:, n, :].astype(q.dtype))

  @pl.when(j == pl.num_programs(2) - 1)
  def _finish():
    for n in range(num_heads):
      o_ref[:, n, :] = (acc_sc[n] / l_sc[n]).astype(o_ref.dtype)


def _chunk_range(causal: BlockCausal | None, i, block_q: int, block_k: int):
  """[lo, hi) of the chunk-key blocks query block i may need (all of them without a mask)."""
  if causal is None:
    return None, None
  q0 = i * block_q
  start, _ = causal.key_range(q0)
  _, end = causal.key_range(q0 + block_q - 1)
  return jnp.maximum(jnp.minimum(start, q0), 0) // block_k, (end + block_k - 1) // block_k


def _check(q, k, memory, mask):
  if mask is not None and not isinstance(mask, BlockCausal):
    raise ValueError("pallas_tpu attention takes no dense mask; pass None or a BlockCausal structure "
                     "(or use the 'reference' backend)")
  if isinstance(mask, BlockCausal) and q.shape[1] != k.shape[1]:
    raise ValueError(f"BlockCausal needs as many queries as chunk keys, got {q.shape[1]} and {k.shape[1]}")
  if q.shape[-1] % 2:
    raise ValueError(f"pallas_tpu attention: head dim {q.shape[-1]} must be even")
  if memory is not None and (memory.k.shape[1], memory.k.shape[-1]) != q.shape[-2:]:
    raise ValueError(f"memory keys {memory.k.shape} ([B, N, R, Q, H]) do not match queries {q.shape} in heads/head "
                     "dim")


@functools.partial(jax.jit, static_argnames=("mask", "block_q", "block_k", "interpret"))
def _forward(q, k, v, memory, mask, *, block_q, block_k, interpret):
  b, t, n, h = q.shape
  s = k.shape[1]
  bq, bk = block_size(t, block_q), block_size(s, block_k)
  num_q, num_c = t // bq, s // bk
  if memory is not None:
    q_len, m = memory.frame_tokens, memory.num_entries
    bm = block_size(q_len, block_k)
    mem_blocks = q_len // bm
    count, entry, slot = compact_entries(memory)
  else:
    m, bm, mem_blocks = 0, 1, 1
    count, entry, slot = jnp.zeros((b,), jnp.int32), jnp.zeros((b, 1), jnp.int32), jnp.zeros((b, 1), jnp.int32)
  memory_steps = m * mem_blocks
  entries = entry.shape[1]

  def mem_step(bi, j, count_ref):  # the memory step to fetch at grid step j: clamped to the last valid one
    last = jnp.maximum(count_ref[bi] * mem_blocks - 1, 0)
    return jnp.minimum(j, last)

  def mem_index(bi, i, j, count_ref, entry_ref, slot_ref):
    js = mem_step(bi, j, count_ref)
    return (bi, 0, slot_ref[bi * entries + js // mem_blocks], js % mem_blocks, 0)

  def angle_index(bi, i, j, count_ref, entry_ref, slot_ref):
    js = mem_step(bi, j, count_ref)
    return (bi, entry_ref[bi * entries + js // mem_blocks], js % mem_blocks, 0)

  def chunk_index(bi, i, j, *_):
    jc = jnp.maximum(j - memory_steps, 0)
    if mask is not None:
      lo, hi = _chunk_range(mask, i, bq, bk)
      jc = jnp.clip(jc, lo, jnp.maximum(hi - 1, lo))
    return (bi, jc, 0, 0)

  q_spec = pl.BlockSpec((None, bq, n, h), lambda bi, i, j, *_: (bi, i, 0, 0))
  chunk_spec = pl.BlockSpec((None, bk, n, h), chunk_index)
  in_specs, args = [q_spec, chunk_spec, chunk_spec], [q, k, v]
  rotate = memory is not None and memory.cos is not None
  if memory is not None:
    res_spec = pl.BlockSpec((None, n, None, bm, h), mem_index)  # [N, bm, H]: every head of one frame block
    in_specs += [res_spec, res_spec]
    args += [memory.k, memory.v]
    if rotate:
      # Expanded to the head dim: cos on both lanes of a pair; -sin on the even lane, +sin on the odd one.
      cos = jnp.repeat(memory.cos.astype(jnp.float32), 2, axis=-1)  # [B, M, Q, H]
      sin = jnp.stack([-memory.sin, memory.sin], axis=-1).reshape(cos.shape).astype(jnp.float32)
      ang_spec = pl.BlockSpec((None, None, bm, h), angle_index)
      in_specs += [ang_spec, ang_spec]
      args += [cos, sin]
  kernel = functools.partial(
      _kernel, has_memory=memory is not None, rotate=rotate, causal=mask, num_entries=m, mem_blocks=mem_blocks,
      block_q=bq, block_k=bk, num_heads=n, scale=h ** -0.5)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=3, grid=(b, num_q, memory_steps + num_c), in_specs=in_specs,
      out_specs=pl.BlockSpec((None, bq, n, h), lambda bi, i, j, *_: (bi, i, 0, 0)),
      scratch_shapes=[pltpu.VMEM((n, bq, 1), jnp.float32), pltpu.VMEM((n, bq, 1), jnp.float32),
                      pltpu.VMEM((n, bq, h), jnp.float32)])
  return pl.pallas_call(
      kernel, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), grid_spec=grid_spec,
      compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=pltpu.InterpretParams() if interpret else False, name="rf_memory_attention_tpu",
  )(count, entry.reshape(-1), slot.reshape(-1), *args)


def memory_attention(q: Array, k: Array, v: Array, memory: SlotMemory | None = None,
                     mask: BlockCausal | None = None, *, block_q: int = 256, block_k: int = 512,
                     interpret: bool = False) -> Array:
  """Attention of queries to [valid memory entries..., chunk keys...] (see `rf_jax.ops.attention`).

  Block sizes are targets: the kernel uses the largest divisors of T, S and Q that are multiples of 8 (the whole
  axis when there is none). Gradients come from the dense oracle.
  """
  _check(q, k, memory, mask)
  fwd = functools.partial(_forward, mask=mask, block_q=block_q, block_k=block_k, interpret=interpret)
  return with_reference_vjp(fwd, mask)(q, k, v, memory)
