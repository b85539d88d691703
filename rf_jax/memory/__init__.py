"""Structured KV memory: a fixed-shape pytree of frame slots and the policies that fill and show it.

  window     Self-Forcing's cache (window + sink; LongLive, Rolling Forcing and Infinity-RoPE position schemes)
  relax      Relax Forcing: sink / relaxation-scored history / tail, hybrid or absolute RoPE
  slow_fast  Context Forcing: sink / promoted slow frames / fast window, bounded RoPE
"""

from __future__ import annotations

import dataclasses
from typing import Any

from rf_jax.memory.base import CallView, Chunk, Policy, check_video_length, moved_by
from rf_jax.memory.relax import RelaxPolicy, candidate_table
from rf_jax.memory.reservoir import Geometry, Reservoir
from rf_jax.memory.slow_fast import SlowFastPolicy
from rf_jax.memory.window import WindowPolicy

POLICIES: dict[str, type[Policy]] = {"window": WindowPolicy, "relax": RelaxPolicy, "slow_fast": SlowFastPolicy}
_ALIASES = {"lambda": "lam"}


def policy_from_dict(d: dict[str, Any], *, source: str = "memory") -> Policy:
  """A policy from a `memory` block: {"policy": NAME, ...fields}. Unknown keys are an error naming the key."""
  if not isinstance(d, dict) or "policy" not in d:
    raise ValueError(f"{source}: expected an object with a 'policy' key ({', '.join(POLICIES)})")
  name = d["policy"]
  if name not in POLICIES:
    raise ValueError(f"{source}: unknown policy {name!r}; expected one of {', '.join(POLICIES)}")
  cls = POLICIES[name]
  fields = {f.name: f for f in dataclasses.fields(cls)}
  kwargs = {}
  for key, value in d.items():
    if key == "policy":
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
  for f in dataclasses.fields(policy):
    out[_public(f.name)] = getattr(policy, f.name)
  return out


def _public(field: str) -> str:
  return {v: k for k, v in _ALIASES.items()}.get(field, field)


__all__ = ["CallView", "Chunk", "Geometry", "POLICIES", "Policy", "RelaxPolicy", "Reservoir", "SlowFastPolicy",
           "WindowPolicy", "candidate_table", "check_video_length", "moved_by", "policy_from_dict", "policy_to_dict"]
