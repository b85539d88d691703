"""Self- and cross-attention of the Wan block: projections, q/k RMSNorm, RoPE, then `ops.attention`.

Self-attention owns no cache. It is handed the layer's memory (a `SlotMemory`: keys, stored rotated, and values of
frame slots, a slot table, the extra RoPE turn of the entries the memory policy moved, a validity mask) and returns
the chunk's own pre-RoPE keys and values, for the rollout to remember or drop. Turning moved memory keys is left to
the attention backend (the kernels fuse it).

Letters: B batch, F frames of the chunk, M memory slots (frames), Q tokens per frame, T = F*Q, S keys, N heads,
H head dim, D width, P text tokens.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rf_jax.model.layers import RMSNorm
from rf_jax.model.rope import apply_rope
from rf_jax.ops import AttnImpl, BlockCausal, SlotMemory, attention

Array = jax.Array


class FrameKV(NamedTuple):
  """Pre-RoPE keys and raw values of whole frames: k, v [B, F, Q, N, H] (per layer), or [L, B, F, Q, N, H]."""
  k: Array
  v: Array


class ChunkQKV(NamedTuple):
  """What a memory function sees of the chunk in one layer: its pre-RoPE keys, raw values and pre-RoPE queries
  (after the q/k RMSNorms), each [B, F, Q, N, H]."""
  k: Array
  v: Array
  q: Array


MemoryFn = Callable[[ChunkQKV], tuple[SlotMemory, Any]]


def _linear(din: int, dout: int, *, dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(din, dout, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class _Attention(nnx.Module):
  """The q/k/v/o projections and the full-width q/k RMSNorms shared by both attentions (PyTorch names)."""

  def __init__(self, dim: int, num_heads: int, *, eps: float, qk_norm: bool, attn_impl: AttnImpl,
               dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.num_heads = num_heads
    self.attn_impl = attn_impl
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q, self.k, self.v, self.o = (_linear(dim, dim, **kw) for _ in range(4))
    self.norm_q = RMSNorm(dim, eps=eps, param_dtype=param_dtype) if qk_norm else None
    self.norm_k = RMSNorm(dim, eps=eps, param_dtype=param_dtype) if qk_norm else None


class SelfAttention(_Attention):

  def __call__(self, x: Array, cos: Array, sin: Array, mask: BlockCausal | Array | None,
               memory: SlotMemory | MemoryFn | None = None,
               q_rope: tuple[Array, Array] | None = None) -> tuple[Array, FrameKV, Any]:
    """x: [B, F, Q, D]; cos/sin: [F, Q, H/2] (or [B, F, Q, H/2]) at the chunk's positions; mask among the chunk's
    own tokens: None (full), a BlockCausal structure, or a dense bool [T, T]. `q_rope`: (cos, sin) of the queries
    when they sit elsewhere than the chunk's own keys (None: at the same positions).

    `memory` is either the memory's keys/values for this layer, or a function that builds them from the chunk's
    own pre-RoPE queries/keys/values (`ChunkQKV`; a policy that decides inside the layer, such as Context Forcing's
    per-layer promotion or Deep Forcing's compression), returning (SlotMemory, aux). Keys are ordered [memory slots..., chunk frames...]. Returns the output
    [B, F, Q, D], the chunk's own pre-RoPE keys and values, and the memory function's aux (None without one).
    """
    b, f, q_len, d = x.shape
    n = self.num_heads
    q = self.project_q(x)  # [B, F, Q, N, H]
    chunk_kv = k, v = self.project_kv(x)
    aux = None
    if callable(memory):
      memory, aux = memory(ChunkQKV(k, v, q))
    q_cos, q_sin = q_rope if q_rope is not None else (cos, sin)
    q_rot, k_rot = apply_rope(q, q_cos, q_sin), apply_rope(k, cos, sin)
    flat = lambda y: y.reshape(b, -1, n, d // n)  # noqa: E731  [B, T, N, H]
    out = attention(flat(q_rot), flat(k_rot), flat(v), memory=memory, mask=mask, impl=self.attn_impl)
    return self.o(out.reshape(b, f, q_len, d)), chunk_kv, aux

  def project_q(self, x: Array) -> Array:
    """x: [B, F, Q, D] -> the pre-RoPE queries (normed) [B, F, Q, N, H]."""
    b, f, q_len, d = x.shape
    q = self.q(x)
    if self.norm_q is not None:
      q = self.norm_q(q)
    return q.reshape(b, f, q_len, self.num_heads, d // self.num_heads)

  def project_kv(self, x: Array) -> FrameKV:
    """x: [B, F, Q, D] -> the chunk's pre-RoPE keys (normed) and values [B, F, Q, N, H]."""
    b, f, q_len, d = x.shape
    k, v = self.k(x), self.v(x)
    if self.norm_k is not None:
      k = self.norm_k(k)
    shape = (b, f, q_len, self.num_heads, d // self.num_heads)
    return FrameKV(k.reshape(shape), v.reshape(shape))


class CrossAttention(_Attention):
  """Text cross-attention (`WanT2VCrossAttention`): no RoPE, no mask; padded text rows are attended too."""

  def text_kv(self, context: Array) -> tuple[Array, Array]:
    """context: [B, P, D] (embedded text) -> keys, values [B, P, N, H]; computed once per prompt."""
    b, p, d = context.shape
    k, v = self.k(context), self.v(context)
    if self.norm_k is not None:
      k = self.norm_k(k)
    shape = (b, p, self.num_heads, d // self.num_heads)
    return k.reshape(shape), v.reshape(shape)

  def __call__(self, x: Array, text_k: Array, text_v: Array, text_bias: Array | None = None) -> Array:
    """x: [B, F, Q, D]; text_k/v: [B, P, N, H]; text_bias: float32 [B, P] or None (see `TextKV`) -> [B, F, Q, D]."""
    b, f, q_len, d = x.shape
    q = self.q(x)
    if self.norm_q is not None:
      q = self.norm_q(q)
    q = q.reshape(b, f * q_len, self.num_heads, d // self.num_heads)  # [B, T, N, H]
    out = attention(q, text_k.astype(q.dtype), text_v.astype(q.dtype), key_bias=text_bias, impl=self.attn_impl)
    return self.o(out.reshape(b, f, q_len, d))
