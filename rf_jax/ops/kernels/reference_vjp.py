"""Gradients for forward-only kernels: a custom_vjp whose backward is the dense oracle's, recomputed in XLA.

Correct for training, not fused. Integer inputs (the slot table, validity) get no cotangent.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rf_jax.ops.memory import SlotMemory
from rf_jax.ops.oracle import dense_memory_attention


def with_reference_vjp(fwd, mask):
  """Wraps a forward kernel so that gradients come from the dense oracle (integer inputs get none)."""
  @jax.custom_vjp
  def f(q, k, v, memory):
    return fwd(q, k, v, memory)

  def f_fwd(q, k, v, memory):
    return fwd(q, k, v, memory), (q, k, v, memory)

  def f_bwd(res, g):
    q, k, v, memory = res
    floats, ints = _split_memory(memory)
    _, vjp = jax.vjp(lambda q, k, v, fl: dense_memory_attention(q, k, v, _join_memory(fl, ints), mask),
                     q, k, v, floats)
    dq, dk, dv, dfl = vjp(g)
    return dq, dk, dv, _memory_cotangent(memory, dfl)

  f.defvjp(f_fwd, f_bwd)
  return f


def _split_memory(memory):
  if memory is None:
    return None, None
  return (memory.k, memory.v, memory.cos, memory.sin), (memory.slots, memory.valid)


def _join_memory(floats, ints):
  if floats is None:
    return None
  k, v, cos, sin = floats
  slots, valid = ints
  return SlotMemory(k, v, slots, valid, cos, sin)


def _memory_cotangent(memory, dfloats):
  if memory is None:
    return None
  zero = lambda a: None if a is None else jnp.zeros(a.shape, jax.dtypes.float0)  # noqa: E731
  dk, dv, dcos, dsin = dfloats
  return SlotMemory(dk, dv, zero(memory.slots), zero(memory.valid), dcos, dsin)  # None angles stay None
