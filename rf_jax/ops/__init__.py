"""Numerical operations shared by the models: attention and its backends."""

from rf_jax.ops.attention import AttnImpl, attention
from rf_jax.ops.reference import reference_attention

__all__ = ["AttnImpl", "attention", "reference_attention"]
