"""Structured KV memory: a fixed-shape pytree of frame slots and the policies that fill and show it.

  window         Self-Forcing's cache (window + sink; LongLive, Rolling Forcing position schemes)
  infinity_rope  Infinity-RoPE exactly: Block-Relativistic RoPE over upstream's slot buffer, KV Flush, RoPE Cut
  deep_forcing   Deep Forcing: deep sink, token-level participative compression (top-C), sink re-alignment
  relax      Relax Forcing: sink / relaxation-scored history / tail, hybrid or absolute RoPE
  slow_fast  Context Forcing: sink / promoted slow frames / fast window, bounded RoPE; mode "clean"
             (`SlowFastPolicy`) or "upstream" (`SlowFastUpstreamPolicy`, the official code's per-layer decisions)

A memory block (config files, fixtures, summaries) is {"policy": NAME, "mode": MODE (slow_fast only), settings...},
settings by field name except `lambda` (Relax's `lam`, a Python keyword): `policy_from_dict` / `policy_to_dict`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from rf_jax.memory.base import CallView, Chunk, Policy, Recache, RecachePlan, check_video_length, moved_by
from rf_jax.memory.deep_forcing import DeepForcingPolicy
from rf_jax.memory.infinity_rope import InfinityRoPEPolicy
from rf_jax.memory.relax import RelaxPolicy, candidate_table
from rf_jax.memory.reservoir import Geometry, Reservoir
from rf_jax.memory.slow_fast import SlowFastPolicy
from rf_jax.memory.slow_fast_upstream import SlowFastUpstreamPolicy
from rf_jax.memory.window import WindowPolicy

POLICIES: dict[str, type[Policy]] = {"window": WindowPolicy, "relax": RelaxPolicy, "slow_fast": SlowFastPolicy,
                                     "infinity_rope": InfinityRoPEPolicy, "deep_forcing": DeepForcingPolicy}
MODES: dict[str, dict[str, type[Policy]]] = {  # policies with several modes: mode -> class (the first is the default)
    "slow_fast": {"clean": SlowFastPolicy, "upstream": SlowFastUpstreamPolicy}}
_ALIASES = {"lambda": "lam"}  # memory-block key -> field

# Every setting a policy has, by field: (type, one line for the command line's help). `--FIELD-NAME` flags are made
# from this table (--lambda for lam).
SETTINGS: dict[str, tuple[type, str]] = {
    "window_frames": (int, "window / infinity_rope: frames attended incl. the chunk; -1 = all (window)"),
    "sink_frames": (int, "every policy: frames kept from the start"),
    "positions": (str, "window: absolute|relocated_sink|end_aligned; relax: hybrid|absolute"),
    "rope_cut_frame": (int, "infinity_rope: where a RoPE cut puts the cut block (default 45)"),
    "capacity_frames": (int, "deep_forcing: frames a compression keeps: sink + top-C + recent (default 16)"),
    "recent_frames": (int, "deep_forcing: recent window, scored with and always kept (default 4)"),
    "topc_max_reuse": (int, "deep_forcing: selections before a token is excluded; 0 = no limit (default 7)"),
    "history_frames": (int, "relax: history frames picked per chunk (default 1)"),
    "tail_frames": (int, "relax: frames right before the chunk (default 1)"),
    "num_candidates": (int, "relax: history candidates per chunk (default 4)"),
    "lam": (float, "relax: redundancy weight lambda (default 2.0)"),
    "reservoir_frames": (int, "relax: candidate reservoir incl. the chunk (default 120)"),
    "selection": (str, "relax: per_sample (default) | batch0 (upstream: sample 0 picks for all)"),
    "slow_frames": (int, "slow_fast: promoted-frame capacity (default 12)"),
    "fast_frames": (int, "slow_fast: recent window incl. the chunk (default 6)"),
    "rope_length": (int, "slow_fast: positions stay below this (default 21)"),
    "threshold": (float, "slow_fast: promote when similarity < threshold (default 0.95)"),
    "mode": (str, "slow_fast: clean (default) | upstream (the official code's per-layer decisions)"),
}


def policy_from_dict(d: dict[str, Any], *, source: str = "memory", **overrides: Any) -> Policy:
  """A policy from a `memory` block: {"policy": NAME, ["mode": MODE,] ...settings}, with `overrides` (settings by
  field name, e.g. the command line's flags) applied over the block's. Unknown keys are an error naming the key."""
  if not isinstance(d, dict) or "policy" not in d:
    raise ValueError(f"{source}: expected an object with a 'policy' key ({', '.join(POLICIES)})")
  d = {**{_ALIASES.get(k, k): v for k, v in d.items()}, **overrides}
  if d["policy"] == "window" and d.get("positions") == "window_relative":  # what the IR fixtures call Infinity-RoPE
    d = {**{k: v for k, v in d.items() if k != "positions"}, "policy": "infinity_rope"}
  name = d["policy"]
  if name not in POLICIES:
    raise ValueError(f"{source}: unknown policy {name!r}; expected one of {', '.join(POLICIES)}")
  cls = POLICIES[name]
  if "mode" in d:
    modes = MODES.get(name)
    if modes is None:
      raise ValueError(f"{source}: policy {name!r} has no setting 'mode'")
    if d["mode"] not in modes:
      raise ValueError(f"{name}: mode={d['mode']!r}; expected {' or '.join(repr(m) for m in modes)}")
    cls = modes[d["mode"]]
  fields = {f.name: f for f in dataclasses.fields(cls)}
  for key, value in cls.fixed_settings.items():
    given = d.pop(key, value)
    if given != value:
      raise ValueError(f"{source}: {name} {key}={given!r} is not ported; only {value!r} (upstream's default)")
  kwargs = {}
  for field, value in d.items():
    if field in ("policy", "mode"):
      continue
    key = _public(field)
    if field not in fields:
      raise ValueError(f"{source}: policy {name!r} has no setting {key!r}; settings: "
                       f"{', '.join(sorted(_public(f) for f in fields))}")
    default = fields[field].default
    if isinstance(default, (int, float)) and not isinstance(default, bool):
      try:
        value = type(default)(value)
      except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{source}: {key}={value!r} is not a {type(default).__name__}") from None
      if not math.isfinite(value):
        raise ValueError(f"{source}: {key}={value} is not a finite number")
    kwargs[field] = value
  return cls(**kwargs)


def policy_to_dict(policy: Policy) -> dict[str, Any]:
  out = {"policy": policy.name}
  if policy.name in MODES:
    out["mode"] = policy.mode
  for f in dataclasses.fields(policy):
    out[_public(f.name)] = getattr(policy, f.name)
  return out


def public_name(field: str) -> str:
  """The name a memory block (and a command-line flag) gives a field: `lambda` for `lam`, else the field's."""
  return _public(field)


def _public(field: str) -> str:
  return {v: k for k, v in _ALIASES.items()}.get(field, field)


__all__ = ["CallView", "Chunk", "DeepForcingPolicy", "Geometry", "InfinityRoPEPolicy", "MODES", "Recache", "RecachePlan", "POLICIES", "Policy", "RelaxPolicy", "Reservoir",
           "SlowFastPolicy", "SlowFastUpstreamPolicy", "WindowPolicy", "candidate_table", "check_video_length",
           "moved_by", "policy_from_dict", "policy_to_dict", "public_name", "SETTINGS"]
