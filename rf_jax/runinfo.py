"""Provenance and memory of a run, for summaries and benchmark lines: the git commit, where it ran and the peak
memory."""

from __future__ import annotations

import os
import resource
import subprocess

import jax


def git_commit() -> str | None:
  """Short commit of the rf_jax checkout, with "-dirty" when tracked files differ from it ($RF_JAX_COMMIT where the
  code runs from a copy without .git), or None."""
  if os.environ.get("RF_JAX_COMMIT"):
    return os.environ["RF_JAX_COMMIT"]
  try:
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         timeout=5)
    commit = out.stdout.strip() or None
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=5).stdout.strip()
    return f"{commit}-dirty" if commit and dirty else commit
  except (OSError, subprocess.SubprocessError):
    return None


def peak_bytes() -> tuple[int, str]:
  """Peak device memory where the backend reports it, else the process's peak resident set."""
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), f"device:{jax.devices()[0].platform}"
  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "host_rss"


def run_info(mesh=None) -> dict:
  """Where a run ran, for summaries and benchmark lines: mesh, processes, devices, device, jax, commit."""
  from rf_jax.parallel import placement
  return {"mesh": None if mesh is None else placement.mesh_flag(placement.mesh_config(mesh)),
          "processes": jax.process_count(), "devices": jax.device_count(), "device": str(jax.devices()[0]),
          "jax": jax.__version__, "commit": git_commit()}
