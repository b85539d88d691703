"""Structured KV memory: a fixed-shape pytree of frame slots and the policies that fill and show it.

  window     Self-Forcing's cache (window + sink; LongLive, Rolling Forcing and Infinity-RoPE position schemes)
  relax      Relax Forcing: sink / relaxation-scored history / tail, hybrid or absolute RoPE
  slow_fast  Context Forcing: sink / promoted slow frames / fast window, bounded RoPE; mode "clean"
             (`SlowFastPolicy`) or "upstream" (`SlowFastUpstreamPolicy`, the official code's per-layer decisions)

A memory block (config files, fixtures, summaries) is {"policy": NAME, "mode": MODE (slow_fast only), settings...},
settings by field name except `lambda` (Relax's `lam`, a Python keyword): `policy_from_dict` / `policy_to_dict`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rf_jax.memory.base import CallView, Chunk, Policy, check_video_length, moved_by
from rf_jax.memory.relax import RelaxPolicy, candidate_table
from rf_jax.memory.reservoir import Geometry, Reservoir
from rf_jax.memory.slow_fast import SlowFastPolicy
from rf_jax.memory.slow_fast_upstream import SlowFastUpstreamPolicy
from rf_jax.memory.window import WindowPolicy

POLICIES: dict[str, type[Policy]] = {"window": WindowPolicy, "relax": RelaxPolicy, "slow_fast": SlowFastPolicy}
MODES: dict[str, dict[str, type[Policy]]] = {  # policies with several modes: mode -> class (the first is the default)
    "slow_fast": {"clean": SlowFastPolicy, "upstream": SlowFastUpstreamPolicy}}
_ALIASES = {"lambda": "lam"}  # memory-block key -> field


def policy_from_dict(d: dict[str, Any], *, source: str = "memory") -> Policy:
  """A policy from a `memory` block: {"policy": NAME, ["mode": MODE,] ...settings}. Unknown keys are an error
  naming the key."""
  if not isinstance(d, dict) or "policy" not in d:
    raise ValueError(f"{source}: expected an object with a 'policy' key ({', '.join(POLICIES)})")
  name = d["policy"]
  if name not in POLICIES:
    raise ValueError(f"{source}: unknown policy {name!r}; expected one of {', '.join(POLICIES)}")
  cls = POLICIES[name]
  if "mode" in d:
    modes = MODES.get(name, {})
    if d["mode"] not in modes:
      raise ValueError(f"{name}: mode={d['mode']!r}; expected " + (" or ".join(repr(m) for m in modes) if modes
                                                                     else "no mode (the policy has one)"))
    cls = modes[d["mode"]]
  fields = {f.name: f for f in dataclasses.fields(cls)}
  kwargs = {}
  for key, value in d.items():
    if key in ("policy", "mode"):
      continue
    field = _ALIASES.get(key, key)
    if field not in fields:
      raise ValueError(f"{source}: policy {name!r} has no setting {key!r}; settings: "
                       f"{', '.join(sorted(_public(f) for f in fields))}")
    default = fields[field].default
    if isinstance(default, (int, float)) and not isinstance(default, bool):
      try:
        value = type(default)(value)
      except (TypeError, ValueError):
        raise ValueError(f"{source}: {key}={value!r} is not a {type(default).__name__}") from None
    kwargs[field] = value
  return cls(**kwargs)


def policy_to_dict(policy: Policy) -> dict[str, Any]:
  out = {"policy": policy.name}
  if policy.name in MODES:
    out["mode"] = policy.mode
  for f in dataclasses.fields(policy):
    out[_public(f.name)] = getattr(policy, f.name)
  return out


def _public(field: str) -> str:
  return {v: k for k, v in _ALIASES.items()}.get(field, field)


__all__ = ["CallView", "Chunk", "Geometry", "MODES", "POLICIES", "Policy", "RelaxPolicy", "Reservoir",
           "SlowFastPolicy", "SlowFastUpstreamPolicy", "WindowPolicy", "candidate_table", "check_video_length",
           "moved_by", "policy_from_dict", "policy_to_dict"]
