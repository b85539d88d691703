"""Sampling: the flow-matching schedule and the autoregressive rollout."""

from rf_jax.sampling.rollout import ChunkOut, Rollout, Sampler, chunk_noise, text_rows
from rf_jax.sampling.schedule import FlowSchedule

__all__ = ["ChunkOut", "FlowSchedule", "Rollout", "Sampler", "chunk_noise", "text_rows"]
