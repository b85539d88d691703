"""What every memory policy provides, and the helpers they share.

A policy is a frozen dataclass: its fields are the typed configuration, its methods pure functions of
(params, state, chunk start). Fields marked `traced` (the relaxation weight, the promotion threshold) are not part
of the compiled layout: `static_part()` blanks them and `params()` hands them to the compiled step as arrays, so a
sweep over them reuses one compilation.

Per chunk, the rollout calls
  begin_chunk(params, state, chunk)         -> state, ctx    before the chunk's first call (selection, eviction)
  call_view(params, state, ctx, chunk)      -> CallView      for each model call (memory view, positions, hook)
  after_call(params, state, ctx, aux)       -> state, trace  after each call (per-layer promotions)
  end_chunk(params, state, ctx, kv, chunk)  -> state, trace  with the clean refill keys/values of the chunk
where `chunk` is a `Chunk` (its first global frame c, traced, and its static frame count F) and kv the chunk's
pre-RoPE keys/values [L, B, F, Q, N, H]. Traces are dicts of fixed-shape arrays that `describe` turns into JSON.

Letters: L layers, B batch, M memory slots, F chunk frames, Q tokens per frame, N heads, H head dim.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.model.dit import LayerHook, MemoryView
from rf_jax.model.rope import MAX_POSITION
from rf_jax.memory.reservoir import Geometry

Array = jax.Array

_BIG = np.iinfo(np.int32).max


class Chunk(NamedTuple):
  start: Array  # int32 scalar: the chunk's first global frame c
  frames: int  # F, static

  @property
  def positions(self) -> Array:
    """int32 [F]: c .. c+F-1."""
    return jnp.asarray(self.start, jnp.int32) + jnp.arange(self.frames, dtype=jnp.int32)


class CallView(NamedTuple):
  """What one model call sees: the memory (positions as the policy assigns them), the chunk's positions, and an
  optional per-layer hook."""
  memory: MemoryView | None
  chunk_pos: Array  # int32 [F], or [B, F] when samples place the chunk differently
  hook: LayerHook | None = None


def traced(default):
  """A policy field that is a runtime scalar (passed to the compiled step), not part of the layout."""
  return dataclasses.field(default=default, metadata={"traced": True})


@dataclasses.dataclass(frozen=True)
class Policy:
  """Base of the memory policies (see the module docstring)."""

  name = "policy"

  def validate(self, chunk_frames: int) -> None:
    """Raises ValueError naming the setting when this configuration cannot run with `chunk_frames`."""

  # ----------------------------------------------------------------------------------------- layout vs scalars

  def static_part(self) -> "Policy":
    """This policy with the traced scalars blanked: the part a compilation depends on."""
    blanks = {f.name: None for f in dataclasses.fields(self) if f.metadata.get("traced")}
    return dataclasses.replace(self, **blanks)

  def params(self) -> dict[str, Array]:
    return {f.name: jnp.asarray(getattr(self, f.name), jnp.float32)
            for f in dataclasses.fields(self) if f.metadata.get("traced")}

  def to_dict(self) -> dict[str, Any]:
    return {"policy": self.name, **dataclasses.asdict(self)}

  # ----------------------------------------------------------------------------------------- the protocol

  def init(self, geom: Geometry) -> Any:
    raise NotImplementedError

  def begin_chunk(self, params, state, chunk: Chunk) -> tuple[Any, Any]:
    return state, None

  def call_view(self, params, state, ctx, chunk: Chunk) -> CallView:
    raise NotImplementedError

  def after_call(self, params, state, ctx, aux) -> tuple[Any, dict[str, Array]]:
    return state, {}

  def end_chunk(self, params, state, ctx, kv, chunk: Chunk) -> tuple[Any, dict[str, Array]]:
    raise NotImplementedError

  def position_span(self, total_frames: int, chunk_frames: int) -> int:
    """An upper bound on (largest - smallest) RoPE frame position within one call, plus one."""
    return total_frames

  def describe(self, chunk: int, trace: dict[str, np.ndarray], calls: dict[str, np.ndarray]) -> dict[str, Any]:
    """JSON-ready diagnostics of one chunk, from its trace (batch leading) and its per-call traces."""
    return {k: np.asarray(v).tolist() for k, v in trace.items()}


def rebase(view: CallView) -> CallView:
  """Shifts every position of the call by one constant so the smallest attended position is 0.

  RoPE scores depend only on position differences, so this changes nothing but float rounding, and keeps the
  frame table lookups small however long the video runs.
  """
  low = jnp.min(view.chunk_pos)
  if view.memory is not None:
    mem = view.memory
    low = jnp.minimum(low, jnp.min(jnp.where(mem.valid, mem.pos, _BIG)))
    mem = mem._replace(pos=jnp.where(mem.valid, mem.pos - low, 0))
    return view._replace(memory=mem, chunk_pos=view.chunk_pos - low)
  return view._replace(chunk_pos=view.chunk_pos - low)


def check_position_span(policy: Policy, total_frames: int, chunk_frames: int) -> None:
  span = policy.position_span(total_frames, chunk_frames)
  if span > MAX_POSITION:
    raise ValueError(f"memory policy {policy.name!r} spans {span} RoPE frame positions in one call over "
                     f"{total_frames} frames; at most {MAX_POSITION} are supported. Use a sinkless window or "
                     "relative positions (e.g. positions='window_relative' or 'relocated_sink', or relax)")
