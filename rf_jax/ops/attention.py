"""The one dispatch point for attention backends.

Every attention in the package goes through `attention(...)`: the chunk's queries attend to the keys of a memory
(frame slots of a head-major reservoir read through a slot table, keys stored rotated, plus an extra rotation for
entries the policy moved) and to the chunk's own keys, under no mask, the structured block-causal training mask, or
(reference/cudnn only) a dense bool mask. Cross-attention to a prompt passes `key_bias` (the log-multiplicity of
merged padding rows, `rf_jax.model.dit.TextKV`), which the XLA path takes on every backend (it is small).
Backends are an enum; kernels live in `rf_jax.kernels`. They are imported with this module, not when first
traced: importing Pallas registers config options, and a registration during a trace changes the tracing context,
so the next call of the enclosing jit would trace (and compile) again.

  reference    plain XLA (`rf_jax.ops.reference`): the chunk's keys, then an online-softmax loop over the valid
               memory entries only, read in place. The dense oracle the tests compare with is `rf_jax.ops.oracle`.
  cudnn        jax.nn.dot_product_attention(implementation="cudnn") on [chunk keys, valid memory entries first]
               with the valid length as a padding mask; bf16/fp16 only. Memory keys are gathered (and turned) first.
  pallas_gpu   rf_jax.kernels.gpu_attention (Pallas on Triton): slot table in place, RoPE fused, invalid entries
               and masked-off blocks skipped.
  pallas_tpu   rf_jax.kernels.tpu_attention (Pallas Mosaic): slot table by scalar prefetch, RoPE fused.
  auto         per platform and dtype, from the table `AUTO`; the environment variable
               RF_JAX_ATTENTION=<backend> overrides it.

On CPU the Pallas backends run in interpret mode (there is no Pallas compiler for CPU), which is how the tests
check them.
"""

from __future__ import annotations

import enum
import os

import jax
import jax.numpy as jnp

from rf_jax.kernels import gpu_attention, tpu_attention
from rf_jax.ops import reference
from rf_jax.ops.masks import BlockCausal
from rf_jax.ops.memory import SlotMemory, compact_entries
from rf_jax.ops.oracle import dense_mask, gather_memory

Array = jax.Array


class AttnImpl(enum.Enum):
  AUTO = "auto"
  REFERENCE = "reference"
  CUDNN = "cudnn"
  PALLAS_GPU = "pallas_gpu"
  PALLAS_TPU = "pallas_tpu"

  @classmethod
  def parse(cls, name: "str | AttnImpl") -> "AttnImpl":
    if isinstance(name, cls):
      return name
    try:
      return cls(name)
    except ValueError:
      raise ValueError(f"unknown attention backend {name!r}; expected one of "
                       f"{', '.join(i.value for i in cls)}") from None


# What `auto` picks: (platform, dtype kind) -> backend. dtype kind is "half" for bfloat16/float16, else "float32".
# The Pallas kernels have been checked in interpret mode only: no GPU or TPU has been available to measure them
# (README, Benchmarks). Until scripts/bench_attention.py has measured them on the hardware, `auto` picks what XLA and
# cuDNN guarantee (cuDNN takes half precision only), and the kernels are chosen by name. Update from measurements.
AUTO = {
    ("cpu", "half"): AttnImpl.REFERENCE,
    ("cpu", "float32"): AttnImpl.REFERENCE,
    ("gpu", "half"): AttnImpl.CUDNN,
    ("gpu", "float32"): AttnImpl.REFERENCE,
    ("tpu", "half"): AttnImpl.REFERENCE,
    ("tpu", "float32"): AttnImpl.REFERENCE,
}
_KERNELS = (AttnImpl.PALLAS_GPU, AttnImpl.PALLAS_TPU)


def platform() -> str:
  p = jax.default_backend()
  return "gpu" if p in ("gpu", "cuda", "rocm") else p


def resolve(impl: "AttnImpl | str", dtype, mask=None) -> AttnImpl:
  """The backend a call will use: `auto` resolved for this platform, dtype and mask."""
  impl = AttnImpl.parse(impl)
  if impl is AttnImpl.AUTO:
    env = os.environ.get("RF_JAX_ATTENTION")
    if env:
      impl = AttnImpl.parse(env)
  if impl is AttnImpl.AUTO:
    half = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
    impl = AUTO.get((platform(), "half" if half else "float32"), AttnImpl.REFERENCE)
    if impl in _KERNELS and mask is not None and not isinstance(mask, BlockCausal):
      impl = AttnImpl.REFERENCE  # a dense mask has no structure a kernel could skip on
    if impl is AttnImpl.CUDNN and not half:
      impl = AttnImpl.REFERENCE
  return impl


def attention(q: Array, k: Array, v: Array, *, memory: SlotMemory | None = None,
              mask: BlockCausal | Array | None = None, key_bias: Array | None = None,
              impl: AttnImpl | str = AttnImpl.AUTO) -> Array:
  """softmax(q K^T / sqrt(H) + bias) V over keys [memory entries..., chunk keys...], logits and softmax in float32.

  q: [B, T, N, H] with RoPE applied; k, v: [B, S, N, H] the chunk's keys (RoPE applied) and values; memory: the
  layer's memory (see `SlotMemory`); mask among the chunk's tokens: None (full), a `BlockCausal`, or a dense bool
  array broadcastable to [B, N, T, S] (True = may attend); key_bias: float32 [B, S] added to the chunk keys' logits
  (no memory with it). Memory entries are masked by their validity only. Returns [B, T, N, H] in q's dtype.
  """
  impl = resolve(impl, q.dtype, mask)
  if key_bias is not None:
    if memory is not None:
      raise ValueError("attention: key_bias is for keys without a memory (cross-attention)")
    impl = AttnImpl.REFERENCE  # prompt keys are few; the bias is the XLA path's
  mesh = _dispatch_mesh(mask)
  if mesh is not None:  # split over the mesh's samples and heads; each device runs `impl` on its part
    from rf_jax.ops.sharded import sharded_attention
    return sharded_attention(mesh, batch_axis=("data", "fsdp"), head_axis="tensor", impl=impl,
                             mask=mask)(q, k, v, memory, key_bias)
  if memory is not None and impl is not AttnImpl.REFERENCE:
    memory = memory.of_layer()  # the kernels and cuDNN take one layer's reservoir
  match impl:
    case AttnImpl.REFERENCE:
      return reference.memory_attention(q, k, v, memory, mask, key_bias)
    case AttnImpl.CUDNN:
      return cudnn_attention(q, k, v, memory, mask)
    case AttnImpl.PALLAS_GPU:
      return gpu_attention.memory_attention(q, k, v, memory, mask, interpret=platform() != "gpu")
    case AttnImpl.PALLAS_TPU:
      return tpu_attention.memory_attention(q, k, v, memory, mask, interpret=platform() != "tpu")
    case _:
      raise ValueError(f"unknown attention backend {impl!r}")


def _dispatch_mesh(mask):
  """The context mesh (`jax.set_mesh`) when it is an rf_jax mesh of several devices not already split manually,
  else None. Attention is independent per sample and head, so under such a mesh it runs under shard_map with no
  communication (a Pallas kernel cannot be partitioned automatically). A dense mask stays with the partitioner."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1 or not {"data", "fsdp", "tensor"} <= set(mesh.axis_names):
    return None
  if any(t == jax.sharding.AxisType.Manual for t in mesh.axis_types):
    return None
  if mask is not None and not isinstance(mask, BlockCausal):
    return None
  return mesh


def cudnn_attention(q: Array, k: Array, v: Array, memory: SlotMemory | None, mask) -> Array:
  """cuDNN flash attention. Keys are [chunk..., valid memory entries first...] so that validity is a padding
  length cuDNN skips without a mask; a block-causal or dense mask is materialised as cuDNN's bias."""
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"cudnn attention needs bfloat16 or float16 inputs, got {q.dtype}; use compute dtype "
                     "bfloat16 or another backend")
  b, t, _, _ = q.shape
  s = k.shape[1]
  lengths = None
  if memory is not None:
    count, entry, slot = compact_entries(memory)
    take = lambda a: jnp.take_along_axis(a, entry[:, :, None, None], axis=1)  # noqa: E731  [B, M, Q, H/2]
    angles = (None, None) if memory.cos is None else (take(memory.cos), take(memory.sin))
    ordered = SlotMemory(memory.k, memory.v, slot, jnp.take_along_axis(memory.valid, entry, axis=1), *angles)
    mk, mv = gather_memory(ordered, q.dtype)
    k, v = jnp.concatenate([k, mk], axis=1), jnp.concatenate([v, mv], axis=1)
    lengths = s + count * memory.frame_tokens  # [B]
    if mask is not None:
      full = dense_mask(ordered, mask, b, t, s)  # [B, 1, T, M*Q + S] over [memory..., chunk...]
      mask = jnp.concatenate([full[..., -s:], full[..., :-s]], axis=-1)
      lengths = None
  elif isinstance(mask, BlockCausal):
    mask = jnp.asarray(mask.dense(t))
  if lengths is None:
    lengths_arg = {}
  else:
    lengths_arg = dict(query_seq_lengths=jnp.full((b,), t, jnp.int32), key_value_seq_lengths=lengths)
  return jax.nn.dot_product_attention(q, k, v, mask=None if mask is None else jnp.asarray(mask, bool),
                                      implementation="cudnn", **lengths_arg)
