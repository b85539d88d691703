"""Flow-matching schedule of the Self-Forcing wrapper (`FlowMatchScheduler(shift, sigma_min=0, extra_one_step)`).

sigma_raw = linspace(1, 0, N+1)[:-1] (float32), sigma = shift*s / (1 + (shift-1)*s), timestep = 1000*sigma. A model
timestep t maps to the sigma of the nearest scheduler timestep.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.numerics import torch_linspace

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlowSchedule:
  shift: float = 5.0
  num_train_timesteps: int = 1000
  sigma_min: float = 0.0
  sigma_max: float = 1.0
  extra_one_step: bool = True

  def __post_init__(self):
    if not self.shift > 0:
      raise ValueError(f"FlowSchedule.shift must be positive, got {self.shift}")
    if self.num_train_timesteps <= 0:
      raise ValueError(f"FlowSchedule.num_train_timesteps must be positive, got {self.num_train_timesteps}")

  def tables(self) -> tuple[np.ndarray, np.ndarray]:
    """(sigmas, timesteps), float32 [num_train_timesteps], as the reference scheduler builds them."""
    n = self.num_train_timesteps
    raw = torch_linspace(self.sigma_max, self.sigma_min, n + 1)[:-1] if self.extra_one_step else \
        torch_linspace(self.sigma_max, self.sigma_min, n)
    shift = np.float32(self.shift)
    sigmas = (shift * raw / (1 + (shift - 1) * raw)).astype(np.float32)
    return sigmas, (sigmas * np.float32(self.num_train_timesteps)).astype(np.float32)

  def sigma(self, t: Array) -> Array:
    """sigma at the scheduler timestep nearest to each t (float32, same shape as t)."""
    sigmas, timesteps = self.tables()
    idx = jnp.argmin(jnp.abs(jnp.asarray(timesteps) - t.astype(jnp.float32)[..., None]), axis=-1)
    return jnp.asarray(sigmas)[idx]

  def x0_from_flow(self, x_t: Array, flow: Array, t: Array) -> Array:
    """x0 = x_t - sigma(t) * flow; x_t, flow: [B, F, ...], t: [B, F]."""
    s = self.sigma(t).reshape(t.shape + (1,) * (x_t.ndim - t.ndim))
    return (x_t.astype(jnp.float32) - s * flow.astype(jnp.float32)).astype(x_t.dtype)

  def add_noise(self, x0: Array, noise: Array, t: Array) -> Array:
    """(1 - sigma) * x0 + sigma * noise, with sigma of the nearest timestep; t broadcast per frame [B, F]."""
    s = self.sigma(t).reshape(t.shape + (1,) * (x0.ndim - t.ndim))
    return ((1 - s) * x0.astype(jnp.float32) + s * noise.astype(jnp.float32)).astype(noise.dtype)

  @classmethod
  def from_reference(cls, d: dict) -> "FlowSchedule":
    """From a fixture's `scheduler` block (FlowMatchScheduler constructor arguments)."""
    return cls(shift=float(d.get("shift", 5.0)), num_train_timesteps=int(d.get("num_train_timesteps", 1000)),
               sigma_min=float(d.get("sigma_min", 0.0)), sigma_max=float(d.get("sigma_max", 1.0)),
               extra_one_step=bool(d.get("extra_one_step", True)))
