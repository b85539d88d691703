"""Attention under `jax.shard_map`: batch and heads split across a mesh, the math untouched.

Attention is independent per sample and per head, so each device runs the chosen backend (a Pallas kernel
included) on its own samples and heads with no communication. The memory's slot table, validity and RoPE angles
are per sample and follow the batch split; its keys and values split by batch and heads like the queries.
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import PartitionSpec as P

from rf_jax.config import BATCH_AXES, HEAD_AXIS
from rf_jax.ops.backend import AttnImpl, local_attention, resolve
from rf_jax.ops.memory import SlotMemory


def sharded_attention(mesh, *, batch_axis: str | tuple[str, ...] | None = BATCH_AXES,
                      head_axis: str | None = HEAD_AXIS, impl: AttnImpl | str = AttnImpl.AUTO, mask=None):
  """A function (q, k, v, memory) -> out like `rf_jax.ops.attention`, run under shard_map on `mesh` (a Mesh or the
  AbstractMesh of the context): each device runs the backend (`local_attention`) on its part. `batch_axis` may name several axes (samples split over their product).

  q, k, v: [B, T|S, N, H] split as P(batch_axis, None, head_axis, None); memory k/v [B, N, R, Q, H] by batch and
  heads; slots/valid [B, M], cos/sin [B, M, Q, H/2] and a key bias [B, S] split by batch. B must divide by the batch axis size and N by the
  head axis size. On a mesh with Explicit axes the inputs must already be placed so (`place` does it).
  """
  batch_names = batch_axis if isinstance(batch_axis, tuple) else (batch_axis,)
  for name in (*batch_names, head_axis):
    if name is not None and name not in mesh.axis_names:
      raise ValueError(f"mesh has axes {mesh.axis_names}; no axis named {name!r}")
  batch_size = 1
  for name in batch_names:
    batch_size *= 1 if name is None else mesh.shape[name]
  tokens = P(batch_axis, None, head_axis, None)
  per_sample = P(batch_axis)

  def memory_spec(memory: SlotMemory | None):
    if memory is None:
      return None
    frames = P(batch_axis, head_axis, None, None, None)
    if memory.layer is not None:  # stacked over layers
      frames = P(None, *frames)
    opt = lambda a: None if a is None else per_sample  # noqa: E731
    return SlotMemory(frames, frames, opt(memory.slots), per_sample, opt(memory.cos), opt(memory.sin),
                      None if memory.layer is None else P())

  def place(q, k, v, memory=None):
    """device_put of the inputs with the shardings the function expects."""
    put = lambda x, spec: x if spec is None else jax.device_put(x, jax.NamedSharding(mesh, spec))  # noqa: E731
    specs = (tokens, tokens, tokens, memory_spec(memory))
    return jax.tree.map(put, (q, k, v, memory), specs, is_leaf=lambda x: x is None)

  def run(q, k, v, memory=None, key_bias=None):
    b, _, n, _ = q.shape
    for name, size, parts, what in ((batch_axis, b, batch_size, "batch"),
                                    (head_axis, n, 1 if head_axis is None else mesh.shape[head_axis], "heads")):
      if name is not None and size % parts:
        raise ValueError(f"{what}={size} does not divide over mesh axis {name!r} of size {parts}")
    bias_spec = None if key_bias is None else per_sample
    fn = jax.shard_map(functools.partial(_local, impl=impl, mask=mask), mesh=mesh,
                       in_specs=(tokens, tokens, tokens, memory_spec(memory), bias_spec), out_specs=tokens,
                       check_vma=False)
    return fn(q, k, v, memory, key_bias)

  run.place = place
  return run


def _local(q, k, v, memory, key_bias, *, impl, mask):
  return local_attention(q, k, v, memory, mask, key_bias, resolve(impl, q.dtype, mask))
