"""Numerical operations shared by the models: attention (entry, sharded wrapper, backends, Pallas kernels), masks,
the memory layout attention reads, and the RoPE rotation."""

from rf_jax.ops.attention import attention
from rf_jax.ops.backend import AttnImpl, resolve
from rf_jax.ops.masks import BlockCausal, block_causal_mask
from rf_jax.ops.memory import SlotMemory
from rf_jax.ops.oracle import dense_attention, dense_memory_attention

__all__ = ["AttnImpl", "BlockCausal", "SlotMemory", "attention", "block_causal_mask", "dense_attention",
           "dense_memory_attention", "resolve"]
