"""The causal Wan2.1 DiT and its parts."""

from rf_jax.model.attention import FrameKV
from rf_jax.model.dit import CausalWanDiT, MemoryView, TextKV
from rf_jax.model.masks import BlockCausal, block_causal_mask

__all__ = ["CausalWanDiT", "BlockCausal", "FrameKV", "MemoryView", "TextKV", "block_causal_mask"]
