"""Sampling: the flow-matching schedule, the autoregressive rollout, and how seeds become random numbers."""

from rf_jax.sampling.rollout import ChunkOut, ResumePoint, Rollout, text_rows
from rf_jax.sampling.sampler import Sampler
from rf_jax.sampling.schedule import FlowSchedule
from rf_jax.sampling.seeds import SeedKeys, chunk_noise, noise_keys, random_text, seed_keys
from rf_jax.sampling.switching import PromptSchedule, Recache

__all__ = ["ChunkOut", "ResumePoint", "FlowSchedule", "PromptSchedule", "Recache", "Rollout", "SeedKeys", "Sampler", "chunk_noise", "noise_keys", "random_text",
           "seed_keys", "text_rows"]
