"""Former home of the rollout check, kept as names only: the side-by-side harness in shared/bench/torch_ref (which
this repository cannot change) imports `folder_policy` and `folder_sampler` from here. They live in
`rf_jax.reference.rollout`."""

from rf_jax.reference.rollout import folder_policy, folder_sampler

__all__ = ["folder_policy", "folder_sampler"]
