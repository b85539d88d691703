"""The few-step sampler of a rollout: which timesteps each chunk is denoised at, how it is re-noised between them,
and the refill's timestep.

    sampler = Sampler.from_steps((1000, 750, 500, 250), shift=5.0)   # Self-Forcing's distilled 4-step list
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from rf_jax.sampling.schedule import FlowSchedule

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sampler:
  """The few-step sampler. `timesteps` are the model timesteps of the denoising calls (already warped).

  Between calls the chunk is re-noised to the next step's sigma around the call's x0 estimate with noise
  eta * fresh + sqrt(1 - eta^2) * implied, where `implied` = x_t + (1 - sigma) * flow is the noise the model sees in
  x_t. eta = 1 (default) is the reference's sampler (fresh noise every step, for distilled few-step models);
  eta = 0 is the deterministic flow ODE's Euler step x_t + (sigma_next - sigma) * flow (for models trained by plain
  flow matching, such as the demo).
  """
  timesteps: tuple[float, ...]
  context_noise: float = 0.0
  chunk_frames: int = 3
  schedule: FlowSchedule = FlowSchedule()
  eta: float = 1.0

  def __post_init__(self):
    if not self.timesteps:
      raise ValueError("Sampler.timesteps is empty")
    steps = list(self.timesteps)
    if not all(np.isfinite(t) and 0 <= t <= self.schedule.num_train_timesteps for t in steps):
      raise ValueError(f"steps {steps}: every step must be a number in [0, {self.schedule.num_train_timesteps}]")
    if any(b >= a for a, b in zip(steps, steps[1:])):
      raise ValueError(f"steps {steps} must decrease: the sampler starts at the noisiest step (e.g. 1000 750 500 250)")
    if not (np.isfinite(self.context_noise) and 0 <= self.context_noise <= self.schedule.num_train_timesteps):
      raise ValueError(f"context_noise={self.context_noise} must be in [0, {self.schedule.num_train_timesteps}]")
    if not 0.0 <= self.eta <= 1.0:
      raise ValueError(f"Sampler.eta={self.eta} must be in [0, 1]")
    if self.chunk_frames < 1:
      raise ValueError(f"Sampler.chunk_frames={self.chunk_frames} must be >= 1")

  @classmethod
  def from_steps(cls, steps=(1000, 750, 500, 250), *, warp: bool = True, shift: float = 5.0,
                 context_noise: float = 0.0, chunk_frames: int = 3, eta: float = 1.0) -> "Sampler":
    """Self-Forcing's step list: with `warp`, raw step s becomes the scheduler timestep at index 1000 - s."""
    schedule = FlowSchedule(shift=shift)
    steps = [float(s) for s in steps]
    if any(b >= a for a, b in zip(steps, steps[1:])):
      raise ValueError(f"steps {steps} must decrease: the sampler starts at the noisiest step (e.g. 1000 750 500 250)")
    if warp:
      _, table = schedule.tables()
      n = schedule.num_train_timesteps
      padded = np.concatenate([table, np.zeros(1, np.float32)])
      for s in steps:
        if not (0 <= s <= n and float(s).is_integer()):
          raise ValueError(f"step {s} cannot be warped: warped steps are integers in [0, {n}]")
      steps = [float(padded[n - int(s)]) for s in steps]
    return cls(timesteps=tuple(steps), context_noise=float(context_noise), chunk_frames=chunk_frames,
               schedule=schedule, eta=float(eta))

  def whole_chunks(self, frames: int) -> int:
    """The frames a rollout of `frames` generates: rounded up to whole chunks (the last chunk is generated whole
    and the frames past `frames` dropped)."""
    return -(-frames // self.chunk_frames) * self.chunk_frames

  def step_noise(self, fresh: Array, x: Array, flow: Array, sigma: Array) -> Array:
    """The noise a call's x0 is re-noised with towards the next step: `fresh` when eta = 1 (static), else
    eta * fresh + sqrt(1 - eta^2) * (x + (1 - sigma) * flow), the noise the model implies in x (float32 in)."""
    if self.eta == 1.0:
      return fresh
    return self.eta * fresh + (1 - self.eta**2) ** 0.5 * (x + (1 - sigma) * flow)
