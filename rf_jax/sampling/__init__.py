"""Sampling: the flow-matching schedule (and, later, the autoregressive rollout)."""

from rf_jax.sampling.schedule import FlowSchedule

__all__ = ["FlowSchedule"]
