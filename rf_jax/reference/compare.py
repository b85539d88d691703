"""How a port's array is held to a reference array: the metric of each kind of array and the verdict."""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_TOLERANCE = 1e-4  # relative error of forward-pass arrays
DEFAULT_ABS_TOLERANCE = 1e-5  # max |difference| of rollout arrays (a wrong memory decision moves them by > 1e-2)


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One compared array: `metric` is rel_err (||out - ref|| / ||ref||), max_abs (max |out - ref|, NaNs must sit
  in the same places) or mismatch (fraction of integer/boolean entries that differ; tolerance 0)."""
  name: str
  value: float
  tolerance: float
  metric: str = "rel_err"

  @property
  def passed(self) -> bool:
    return bool(np.isfinite(self.value) and self.value <= self.tolerance)

  def line(self) -> str:
    return f"{self.name:<40s} {self.metric}={self.value:.3e}  {'PASS' if self.passed else 'FAIL'}"


def max_abs_error(out: np.ndarray, ref: np.ndarray) -> float:
  """max |out - ref| over the finite entries of ref; inf if the shapes or the NaN patterns differ."""
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  if out.shape != ref.shape or not np.array_equal(np.isnan(out), np.isnan(ref)):
    return float("inf")
  finite = ~np.isnan(ref)
  return float(np.max(np.abs(out[finite] - ref[finite]), initial=0.0))


def mismatch(out: np.ndarray, ref: np.ndarray) -> float:
  out, ref = np.asarray(out), np.asarray(ref)
  if out.shape != ref.shape:
    return float("inf")
  return float(np.mean(out != ref)) if ref.size else 0.0


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
  out, ref = np.asarray(out), np.asarray(ref)
  if out.shape != ref.shape:
    return float("inf")
  if ref.dtype == bool:
    return float(np.mean(out != ref)) if ref.size else 0.0
  out, ref = out.astype(np.float64), ref.astype(np.float64)
  denom = np.linalg.norm(ref)
  diff = np.linalg.norm(out - ref)
  return float(diff / denom) if denom > 0 else float(diff)


def channels_last(x: np.ndarray) -> np.ndarray:
  """The fixtures' latents [..., C, H, W] -> ours [..., H, W, C]."""
  return np.moveaxis(x, -3, -1)


class Checks:
  """Comparisons against the arrays `z` of a reference file at max-abs tolerance `tol`. A folder may hold a subset
  of the arrays (an independent implementation's): an absent one gives None, which the caller skips."""

  def __init__(self, z: dict, tol: float):
    self.z, self.tol = z, tol

  def exact(self, name: str, ours) -> Comparison | None:
    return Comparison(name, mismatch(ours, self.z[name]), 0.0, "mismatch") if name in self.z else None

  def max_abs(self, name: str, ours) -> Comparison | None:
    return Comparison(name, max_abs_error(ours, self.z[name]), self.tol, "max_abs") if name in self.z else None

  def latent(self, name: str, ours) -> Comparison | None:
    """Latents stored in the fixtures' layout."""
    if name not in self.z:
      return None
    return Comparison(name, max_abs_error(ours, channels_last(self.z[name])), self.tol, "max_abs")
