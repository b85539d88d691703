"""What a sweep shows from its finished units: results.csv (one row per run) and summary.png (each metric per
configuration), each replaced atomically."""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Sequence

import numpy as np

from rf_jax.io import replace_bytes
from rf_jax.memory import policy_to_dict
from rf_jax.metrics import NAMES as METRICS
from rf_jax.sweep.config import Sweep, label
from rf_jax.sweep.store import Store


def write_results(out: str, sweep: Sweep, store: Store, finished: Sequence[Unit]) -> None:
  """results.csv and summary.png from the finished units (each replaced atomically)."""
  metrics = store.read_metrics()
  samples = sweep.samples
  conditions = [c for c, on in (("switches", sweep.switches != ((),)), ("initial", sweep.initial != (None,))) if on]
  rows = []
  for u in sorted(finished, key=lambda u: (u.config, u.first)):
    for s in range(u.first, u.first + u.count):
      prompt, seed = samples[s]
      switches, initial = sweep.condition_of(s)
      cond = {"switches": json.dumps(switches), "initial": initial or ""}
      rows.append({"config": u.config, "label": label(sweep.policies[u.config]),
                   "policy": json.dumps(policy_to_dict(sweep.policies[u.config]), sort_keys=True),
                   "sample": s, "prompt": prompt, "seed": seed, **{c: cond[c] for c in conditions},
                   **{m: repr(float(metrics[m][u.config, s])) for m in METRICS}})
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=["config", "label", "policy", "sample", "prompt", "seed", *conditions,
                                           *METRICS], lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  replace_bytes(os.path.join(out, "results.csv"), buf.getvalue().encode())
  replace_bytes(os.path.join(out, "summary.png"), summary_plot(sweep, rows))


def summary_plot(sweep: Sweep, rows: list[dict]) -> bytes:
  """A PNG: one panel per metric, each configuration's samples (dots) and mean (bar)."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  labels = [label(p) for p in sweep.policies]
  fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), constrained_layout=True)
  for ax, m in zip(axes.ravel(), METRICS):
    for c in range(len(labels)):
      vals = [float(r[m]) for r in rows if r["config"] == c]
      if vals:
        ax.bar(c, np.mean(vals), color="C0", alpha=0.35)
        ax.plot([c] * len(vals), vals, "o", color="C0", markersize=3)
    ax.set_title(m.replace("_", " "))
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
  fig.suptitle(f"{len(rows)} runs, {len(labels)} configurations x {len(sweep.samples)} samples "
               f"({sweep.frames} frames, model {sweep.model})")
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
  plt.close(fig)
  return buf.getvalue()
