"""Numerics that must match PyTorch bit for bit, shared by the schedule and the memory policies."""

from __future__ import annotations

import numpy as np


def torch_linspace(start: float, end: float, steps: int) -> np.ndarray:
  """float32 `torch.linspace` bit for bit: a float32 step, each value rounded once (fused multiply-add) from the
  start for the first half and from the end for the second."""
  start32, end32 = np.float32(start), np.float32(end)
  step = np.float64(np.float32((end32 - start32) / np.float32(max(steps - 1, 1))))
  i = np.arange(steps, dtype=np.float64)
  return np.where(i < steps // 2, np.float64(start32) + step * i,
                  np.float64(end32) - step * (steps - 1 - i)).astype(np.float32)
