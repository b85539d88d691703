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
where `chunk` is a `Chunk` (its first global frame c, traced, its static frame count F and token grid) and kv the
chunk's pre-RoPE keys/values [L, B, F, Q, N, H]. Traces are dicts of fixed-shape arrays that `describe` turns into
JSON; their positions are the ones the policy assigns (what RoPE sees, up to one constant).

Positions. A reservoir stores each frame's keys rotated at the frame's index, and the model rotates the chunk at
its frame indices c..c+F-1, so a frame shown where it happened needs nothing. A policy that shows entry m at
position p_m while the chunk sits at p_c..p_c+F-1 turns it by `shift_m = (p_m - p_c) - (frame_m - c)` (the same
relative offsets, expressed from where the key is stored): `moved_by`.

Letters: L layers, B batch, M memory slots, F chunk frames, Q tokens per frame, N heads, H head dim.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.model.dit import LayerHook, MemoryView
from rf_jax.model.rope import MAX_POSITION
from rf_jax.memory.reservoir import Geometry

Array = jax.Array


class Chunk(NamedTuple):
  start: Array  # int32 scalar: the chunk's first global frame c
  frames: int  # F, static
  grid: tuple[int, int]  # (Hp, Wp): the token grid of a frame, static (where the stored keys are rotated)

  @property
  def positions(self) -> Array:
    """int32 [F]: c .. c+F-1."""
    return jnp.asarray(self.start, jnp.int32) + jnp.arange(self.frames, dtype=jnp.int32)


class CallView(NamedTuple):
  """What one model call sees: the memory (with the extra turn of each moved entry), the positions the chunk is
  rotated at (in the frame of reference of the memory's stored keys), an optional per-layer hook, and where the
  queries sit when a policy puts them elsewhere than the chunk's own keys (Infinity-RoPE)."""
  memory: MemoryView | None
  chunk_pos: Array  # int32 [F], or [B, F] when samples place the chunk differently
  hook: LayerHook | None = None
  query_pos: Array | None = None  # int32 [F]; None: at chunk_pos


class Recache(enum.Enum):
  """What a prompt switch re-runs (`rf_jax.sampling.switching`); None on a rollout: the policy's default."""
  NONE = "none"  # the prompt changes; the memory keeps its keys
  WINDOW = "window"  # LongLive: the frames the window covers
  ALL_MEMORY = "all_memory"  # every frame the memory holds
  FLUSH = "flush"  # Infinity-RoPE's KV Flush: the sink and the last two slots stay, nothing re-runs


class RecachePlan(NamedTuple):
  """A prompt switch's re-cache (LongLive): the frames before the switch re-run through the model with the new
  prompt, W of them at a fixed width (frame c - W + i at index i; c the switch chunk's start), so that the memory
  holds keys conditioned on the new prompt."""
  frames: Array  # int32 [W] or per sample [B, W]: the frame at each index (negative: none)
  rerun: Array  # bool like frames: re-run (its output is meaningful)
  keys: Array  # bool like frames: its new keys are attended by the re-run call and stored
  memory: MemoryView | None  # the entries kept from before, which the re-run call attends too
  positions: Array | None = None  # int32 like frames: where the re-run call places them (None: at their frames)


def moved_by(pos: Array, frames: Array, valid: Array, chunk_pos: Array, chunk: Chunk) -> Array:
  """int32 [B, M]: the extra turn of each entry of a reservoir view (see the module docstring). pos/frames/valid
  [B, M]: where the policy shows each entry and the frame it holds; chunk_pos [F] or [B, F]: where it shows the
  chunk."""
  first = jnp.asarray(chunk_pos)[..., 0]
  first = first[:, None] if first.ndim else first
  return jnp.where(valid, (pos - first) - (frames - chunk.start), 0).astype(jnp.int32)


def traced(default):
  """A policy field that is a runtime scalar (passed to the compiled step), not part of the layout."""
  return dataclasses.field(default=default, metadata={"traced": True})


@dataclasses.dataclass(frozen=True)
class Policy:
  """Base of the memory policies (see the module docstring)."""

  name = "policy"

  def validate(self, chunk_frames: int) -> None:
    """Raises ValueError naming the setting when this configuration cannot run with `chunk_frames`."""

  def check(self, chunk_frames: int) -> None:
    """`validate`, after the checks every policy shares: its numbers are finite."""
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if isinstance(value, float) and not np.isfinite(value):
        raise ValueError(f"{self.name}: {f.name}={value} is not a finite number")
    self.validate(chunk_frames)

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

  # ----------------------------------------------------------------------------------------- prompt switches

  fixed_settings: ClassVar[dict] = {}  # upstream settings a memory block may state, only at these values (not fields)
  default_recache = Recache.NONE  # what a switch re-caches unless told
  scene_events = False  # whether `scene_event` (KV Flush, RoPE Cut) exists

  def recache_width(self, geom: Geometry, recache: Recache) -> int:
    """W: how many frames a re-cache in mode `recache` re-runs at most (the compiled width); raises for a mode the
    policy does not have."""
    raise ValueError(f"memory policy {self.name!r} cannot re-cache after a prompt switch yet; use recache=none")

  def recache_frames(self, state, chunk_start: int, width: int) -> np.ndarray:
    """The frames a re-cache at `chunk_start` re-runs, int [width] or per sample [B, width] (-1: none), on the host
    (`state` may be read): by default the last `width`, c - width .. c - 1. The caller hands their output latents
    to the re-cache call."""
    frames = chunk_start - width + np.arange(width)
    return np.where(frames >= 0, frames, -1)

  def recache_plan(self, params, state, chunk: Chunk, frames: Array, keep_sink: bool) -> tuple[Any, RecachePlan]:
    """Before the re-cache call of a switch at chunk `chunk`, re-running `frames` (`recache_frames`, traced):
    (state, plan). `keep_sink`: LongLive's global sink (the first frames keep their keys from before the switch
    once the window has moved past them)."""
    raise ValueError(f"memory policy {self.name!r} cannot re-cache after a prompt switch yet; use recache=none")

  def recache_store(self, params, state, plan: RecachePlan, kv, chunk: Chunk, keep_sink: bool) -> Any:
    """After the re-cache call: the memory holding the re-run frames' keys/values kv [L, B, W, Q, N, H]."""
    raise NotImplementedError

  def scene_event(self, params, state, flush: Array, cut: Array):
    """A scene boundary before the next chunk (traced flags): Infinity-RoPE's KV Flush and RoPE Cut."""
    raise ValueError(f"memory policy {self.name!r} has no scene events (KV Flush, RoPE Cut: infinity_rope's)")

  def describe(self, chunk: int, trace: dict[str, np.ndarray], calls: dict[str, np.ndarray]) -> dict[str, Any]:
    """JSON-ready diagnostics of one chunk, from its trace (batch leading) and its per-call traces."""
    return {k: np.asarray(v).tolist() for k, v in trace.items()}


def check_video_length(policy: Policy, total_frames: int, chunk_frames: int) -> None:
  """Stored keys are rotated at their frame index: the video must fit the RoPE tables (2^30 latent frames)."""
  if total_frames + chunk_frames > MAX_POSITION:
    raise ValueError(f"memory policy {policy.name!r}: {total_frames} frames exceed the {MAX_POSITION} RoPE frame "
                     "positions rf_jax supports")
