"""Attention masks of the training path: see `rf_jax.ops.masks` (kept here for the model's public names)."""

from rf_jax.ops.masks import BlockCausal, block_causal_mask

__all__ = ["BlockCausal", "block_causal_mask"]
