"""The causal Wan attention block with per-frame adaLN (`CausalWanAttentionBlock`).

    h = LN1(x) * (1 + scale_sa) + shift_sa;   x = x + SelfAttn(h) * gate_sa
    x = x + CrossAttn(LN3(x), text)
    h = LN2(x) * (1 + scale_ffn) + shift_ffn; x = x + FFN(h) * gate_ffn

The residual stream, the norms and the modulation/gating arithmetic run in float32; the projections and attention
run in the compute dtype (float32 or bfloat16).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rf_jax.config import ModelConfig
from rf_jax.model.attention import ChunkQKV, CrossAttention, FrameKV, MemoryFn, SelfAttention
from rf_jax.model.layers import LayerNorm, gelu_tanh, layer_norm, modulate
from rf_jax.ops import AttnImpl, SlotMemory

Array = jax.Array


class WanBlock(nnx.Module):

  def __init__(self, config: ModelConfig, *, attn_impl: AttnImpl, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    d = config.dim
    self.eps = config.eps
    self.dtype = dtype
    attn_kw = dict(eps=config.eps, qk_norm=config.qk_norm, attn_impl=attn_impl, dtype=dtype,
                   param_dtype=param_dtype, rngs=rngs)
    self.modulation = nnx.Param(jax.random.normal(rngs.params(), (1, 6, d), param_dtype) / d**0.5)
    self.self_attn = SelfAttention(d, config.num_heads, **attn_kw)
    self.norm3 = (LayerNorm(d, eps=config.eps, affine=True, param_dtype=param_dtype)
                  if config.cross_attn_norm else None)
    self.cross_attn = CrossAttention(d, config.num_heads, **attn_kw)
    self.ffn = nnx.Sequential(
        nnx.Linear(d, config.ffn_dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs),
        gelu_tanh,
        nnx.Linear(config.ffn_dim, d, dtype=dtype, param_dtype=param_dtype, rngs=rngs),
    )

  def __call__(self, x: Array, e0: Array, text_k: Array, text_v: Array, text_bias: Array | None, cos: Array,
               sin: Array, mask, memory: SlotMemory | MemoryFn | None = None,
               q_rope: tuple[Array, Array] | None = None) -> tuple[Array, FrameKV, Any]:
    """x: [B, F, Q, D] float32; e0: [B, F, 6, D] float32 time projection; text_k/v [B, P, N, H] and text_bias
    [B, P] (or None) from `TextKV`; q_rope: the queries' own (cos, sin), see `SelfAttention`.

    Returns (x, the chunk's pre-RoPE k/v, the memory function's aux or None); see `SelfAttention`.
    """
    m = self.modulation[...].astype(jnp.float32) + e0  # [B, F, 6, D]
    shift_sa, scale_sa, gate_sa, shift_ffn, scale_ffn, gate_ffn = (m[:, :, i, None, :] for i in range(6))

    h = modulate(layer_norm(x, self.eps), shift_sa, scale_sa).astype(self.dtype)
    y, chunk_kv, aux = self.self_attn(h, cos, sin, mask, memory, q_rope)
    x = x + y.astype(jnp.float32) * gate_sa

    h = (self.norm3(x) if self.norm3 is not None else x).astype(self.dtype)
    x = x + self.cross_attn(h, text_k, text_v, text_bias).astype(jnp.float32)

    h = modulate(layer_norm(x, self.eps), shift_ffn, scale_ffn).astype(self.dtype)
    x = x + self.ffn(h).astype(jnp.float32) * gate_ffn
    return x, chunk_kv, aux

  def keys_only(self, x: Array, e0: Array, memory: SlotMemory | MemoryFn | None = None
                ) -> tuple[Array, FrameKV, Any]:
    """Only the chunk's pre-RoPE keys/values of this block (a memory function still runs, for its aux); x is
    returned unchanged. What the last layer of a refill needs."""
    m = self.modulation[...].astype(jnp.float32) + e0  # [B, F, 6, D]
    h = modulate(layer_norm(x, self.eps), m[:, :, 0, None, :], m[:, :, 1, None, :]).astype(self.dtype)
    chunk_kv = self.self_attn.project_kv(h)
    aux = memory(ChunkQKV(*chunk_kv, self.self_attn.project_q(h)))[1] if callable(memory) else None
    return x, chunk_kv, aux
