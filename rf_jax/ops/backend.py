"""The attention backends and the one place that picks and calls them.

  reference    plain XLA (`rf_jax.ops.reference`): the chunk's keys, then an online-softmax loop over the valid
               memory entries only, read in place. The dense oracle the tests compare with is `rf_jax.ops.oracle`.
  cudnn        jax.nn.dot_product_attention(implementation="cudnn") on [chunk keys, valid memory entries first]
               with the valid length as a padding mask; bf16/fp16 only. Memory keys are gathered (and turned) first.
  pallas_gpu   rf_jax.ops.kernels.gpu_attention (Pallas on Triton): slot table in place, RoPE fused, invalid
               entries and masked-off blocks skipped.
  pallas_tpu   rf_jax.ops.kernels.tpu_attention (Pallas Mosaic): slot table by scalar prefetch, RoPE fused.
  auto         per platform and dtype, from the table `AUTO`; the environment variable
               RF_JAX_ATTENTION=<backend> overrides it.

The kernels are imported with this module, not when first traced: importing Pallas registers config options, and a
registration during a trace changes the tracing context, so the next call of the enclosing jit would trace (and
compile) again. On CPU the Pallas backends run in interpret mode (there is no Pallas compiler for CPU), which is how
the tests check them.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from rf_jax.config import Setting
from rf_jax.ops import reference
from rf_jax.ops.kernels import gpu_attention, tpu_attention
from rf_jax.ops.masks import BlockCausal
from rf_jax.ops.memory import SlotMemory, compact_entries
from rf_jax.ops.oracle import dense_mask, gather_memory

Array = jax.Array


class AttnImpl(Setting):
  AUTO = "auto"
  REFERENCE = "reference"
  CUDNN = "cudnn"
  PALLAS_GPU = "pallas_gpu"
  PALLAS_TPU = "pallas_tpu"

  @classmethod
  def what(cls) -> str:
    return "unknown attention backend"


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


def local_attention(q: Array, k: Array, v: Array, memory: SlotMemory | None, mask, key_bias: Array | None,
                    impl: AttnImpl) -> Array:
  """`attention` on this device's arrays with a resolved backend (see `rf_jax.ops.attention.attention`)."""
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
      raise ValueError(f"unresolved attention backend {impl!r}")


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
