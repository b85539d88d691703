"""The public attention entry: every attention in the package calls `attention(...)`.

The chunk's queries attend to the keys of a memory (frame slots of a head-major reservoir read through a slot table,
keys stored rotated, plus an extra rotation for entries the policy moved) and to the chunk's own keys, under no
mask, the structured block-causal training mask, or (reference/cudnn only) a dense bool mask. Cross-attention to a
prompt passes `key_bias` (the log-multiplicity of merged padding rows, `rf_jax.model.dit.TextKV`), which the XLA
path takes on every backend (it is small).

Three modules, each pointing down:
  attention.py   this entry: resolves the backend and chooses sharded or local
  sharded.py     the same call under shard_map over a mesh's sample and head axes (rf_jax.config.MESH_AXES)
  backend.py     the backend enum, the `auto` table and the dispatch to XLA, cuDNN or a Pallas kernel
"""

from __future__ import annotations

import jax

from rf_jax.config import BATCH_AXES, HEAD_AXIS, MESH_AXES
from rf_jax.ops.backend import AttnImpl, local_attention, resolve
from rf_jax.ops.masks import BlockCausal
from rf_jax.ops.memory import SlotMemory
from rf_jax.ops.sharded import sharded_attention

Array = jax.Array


def attention(q: Array, k: Array, v: Array, *, memory: SlotMemory | None = None,
              mask: BlockCausal | Array | None = None, key_bias: Array | None = None,
              impl: AttnImpl | str = AttnImpl.AUTO) -> Array:
  """softmax(q K^T / sqrt(H) + bias) V over keys [memory entries..., chunk keys...], logits and softmax in float32.

  q: [B, T, N, H] with RoPE applied; k, v: [B, S, N, H] the chunk's keys (RoPE applied) and values; memory: the
  layer's memory (see `SlotMemory`); mask among the chunk's tokens: None (full), a `BlockCausal`, or a dense bool
  array broadcastable to [B, N, T, S] (True = may attend); key_bias: float32 [B, S] added to the chunk keys' logits
  (no memory with it). Memory entries are masked by their validity only. Returns [B, T, N, H] in q's dtype.

  Under a context mesh (`jax.set_mesh`) with rf_jax's axes, the call runs under shard_map, split over samples and
  heads (see `ambient_mesh`); otherwise on the local arrays.
  """
  impl = resolve(impl, q.dtype, mask)
  if key_bias is not None:
    if memory is not None:
      raise ValueError("attention: key_bias is for keys without a memory (cross-attention)")
    impl = AttnImpl.REFERENCE  # prompt keys are few; the bias is the XLA path's
  mesh = ambient_mesh(mask)
  if mesh is not None:  # each device runs `impl` on its samples and heads
    return sharded_attention(mesh, impl=impl, mask=mask)(q, k, v, memory, key_bias)
  return local_attention(q, k, v, memory, mask, key_bias, impl)


def ambient_mesh(mask):
  """The context mesh when it is an rf_jax mesh of several devices not already split manually, else None.
  Attention is independent per sample and head, so under such a mesh it runs under shard_map with no
  communication (a Pallas kernel cannot be partitioned automatically). A dense mask stays with the partitioner."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1 or not set(MESH_AXES) <= set(mesh.axis_names):
    return None
  if any(t == jax.sharding.AxisType.Manual for t in mesh.axis_types):
    return None
  if mask is not None and not isinstance(mask, BlockCausal):
    return None
  return mesh


__all__ = ["AttnImpl", "BATCH_AXES", "HEAD_AXIS", "attention", "ambient_mesh", "resolve"]
