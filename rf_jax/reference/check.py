"""`rf-jax check-reference DIR`: hold the port to outputs of the real PyTorch code.

A DiT reference folder holds `config.json` (`constructor_args`, geometry, `scheduler`, ...), `model.safetensors`
(PyTorch state-dict keys) and any of:
  rope.npz           `causal_rope_apply` at start frames 0 and 7, and the float64 `freqs` table
  forward_train.npz  one block-causal training-style forward with its intermediate activations
  rollout.npz        an autoregressive rollout with its memory policy (see `rf_jax.reference.rollout`)
  rollout_*.npz      rollouts from initial frames, listed in config.json's `rollouts` (`rf_jax.reference.initial`)
  (interactive)      rollout.npz and rollout_nogs.npz with prompt switches, when config.json has an `interactive`
                     block (`rf_jax.reference.switching`)
A umT5 folder holds `t5.npz` instead (`rf_jax.reference.text`), a VAE folder `vae.npz` (`rf_jax.reference.vae`).
Each compared array gets one line: name, metric, and PASS/FAIL at the tolerance. Forward arrays use the relative
error ||out - ref|| / ||ref||; rollout arrays the max absolute difference; integer and boolean arrays (selections,
promotions, slot tables, masks) must match exactly.
"""

from __future__ import annotations

import os
from typing import Callable

import jax
import numpy as np

from rf_jax.reference.compare import DEFAULT_ABS_TOLERANCE, DEFAULT_TOLERANCE, Comparison
from rf_jax.reference.dit import check_forward, check_rope
from rf_jax.reference.folder import ReferenceFolder
from rf_jax.reference.initial import check_initial
from rf_jax.reference.switching import check_switching
from rf_jax.reference.rollout import check_rollout, unchecked_arrays
from rf_jax.reference.text import check_t5
from rf_jax.reference.vae import check_vae


def check_reference(path: str | os.PathLike, *, tolerance: float = DEFAULT_TOLERANCE,
                    abs_tolerance: float = DEFAULT_ABS_TOLERANCE,
                    emit: Callable[[str], None] = print) -> tuple[list[Comparison], list[str]]:
  """Runs every check the folder has files for. Returns (comparisons, notes about files not checked)."""
  results: list[Comparison] = []
  notes: list[str] = []

  def run(checks):
    for c in checks:
      emit(c.line())
      results.append(c)

  if os.path.exists(os.path.join(os.fspath(path), "t5.npz")):  # a umT5 text-encoder folder
    ref = ReferenceFolder.open(path, dit=False)
    with jax.default_matmul_precision("highest"):
      run(check_t5(ref, ref.npz("t5.npz"), tolerance))
    return results, notes
  if os.path.exists(os.path.join(os.fspath(path), "vae.npz")):  # a Wan VAE folder
    ref = ReferenceFolder.open(path, dit=False)
    with jax.default_matmul_precision("highest"):
      run(check_vae(ref, ref.npz("vae.npz"), tolerance))
    notes.append("vae.npz: stream6_raw (the demo's differing streaming decoder) is not our target; not compared")
    return results, notes
  ref = ReferenceFolder.open(path)
  known = ["rope.npz", "forward_train.npz", "rollout.npz"]
  if "interactive" in ref.config:  # prompt switches with re-cache (LongLive)
    with jax.default_matmul_precision("highest"):
      got, more = check_switching(ref, ref.load_model(), abs_tolerance)
    run(got)
    notes += more
    known = ["rope.npz", "forward_train.npz", "rollout.npz", "rollout_nogs.npz"]
  elif "rollouts" in ref.config:  # rollouts with initial frames (image-to-video, video extension)
    with jax.default_matmul_precision("highest"):
      got, more = check_initial(ref, ref.load_model(), abs_tolerance)
    run(got)
    notes += more
    known = ["rope.npz", "forward_train.npz", *(spec["file"] for spec in ref.config["rollouts"].values())]

  with jax.default_matmul_precision("highest"):
    rope = ref.npz("rope.npz")
    if rope is not None:
      run(check_rope(ref, rope, tolerance))
    forward = ref.npz("forward_train.npz")
    special = "interactive" in ref.config or "rollouts" in ref.config  # their rollouts are checked above
    rollout = None if special else ref.npz("rollout.npz")
    model = ref.load_model() if forward is not None or rollout is not None else None
    if forward is not None:
      run(check_forward(ref, forward, model, tolerance))
    if rollout is not None:
      run(check_rollout(ref, rollout, model, abs_tolerance))
      left = unchecked_arrays(rollout, results)
      if left:
        notes.append(f"rollout.npz: not compared: {', '.join(left)}")
  for name in sorted(os.listdir(ref.path)):
    if name.endswith(".npz") and name not in known:
      notes.append(f"{name}: not checked by this version of rf_jax")
  if not results:
    raise ValueError(f"{ref.path}: nothing to compare (no rope.npz, forward_train.npz or rollout.npz)")
  return results, notes


def summarize(results: list[Comparison]) -> dict:
  """The verdict of a check as one JSON object: how many compared, passed, which failed, the worst of each metric."""
  summary = {"compared": len(results), "passed": all(r.passed for r in results),
             "failed": [r.name for r in results if not r.passed]}
  for metric in ("rel_err", "max_abs", "mismatch"):
    values = [r.value for r in results if r.metric == metric]
    if values:
      summary[f"worst_{metric}"] = max(values)
  return summary
