"""Prompt switches: a rollout's prompt schedule and how the memory is re-cached at a switch (LongLive).

A schedule is data: prompt k conditions the video from latent frame `switch_frames[k-1]` on. A switch takes effect
at the first chunk whose start frame is at or past its frame (a frame inside a chunk is rounded up to the next
chunk start), at most one per chunk, as LongLive's interactive pipeline does. Neither the frames nor the prompts
are part of a compiled shape: a sweep over switch points reuses one compilation.

At a switch, the text conditioning changes, and the memory is re-cached (`Recache`, the policy's default unless
told): frames before the switch are run once more through the model, at the refill's timestep, with the new prompt
and no mask among them, so the memory holds keys conditioned on it. `WINDOW` (LongLive's behaviour, the window
policy's default) re-runs the frames the window covers; `ALL_MEMORY` (Relax Forcing's default) every frame the
memory holds (Relax: the sink and the whole live ring, so every history candidate is re-keyed). `NONE` only changes
the prompt.
`global_sink` (LongLive's, default True): once the window has moved past the sink, the sink keeps its keys from
before the switch; False rebuilds the sink from the first re-run frames (and keeps those for good).

Infinity-RoPE treats a switch as a scene boundary: `FLUSH` (its default) runs its KV Flush instead of a re-cache,
and a switch marked as a cut (`cuts`) also moves that chunk's positions (RoPE Cut). Both are traced flags of one
small jitted step: a sweep over where they happen reuses one compilation.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from rf_jax.memory import Recache

__all__ = ["PromptSchedule", "Recache"]


@dataclasses.dataclass(frozen=True)
class PromptSchedule:
  """Prompt k from latent frame switch_frames[k-1] on (prompt 0 from the start); `cuts[k-1]`: switch k is a scene
  cut (Infinity-RoPE's RoPE Cut; default none)."""
  switch_frames: tuple[int, ...] = ()
  cuts: tuple[bool, ...] = ()

  def __post_init__(self):
    object.__setattr__(self, "switch_frames", tuple(int(f) for f in self.switch_frames))
    object.__setattr__(self, "cuts", tuple(bool(c) for c in self.cuts) or (False,) * len(self.switch_frames))
    if len(self.cuts) != len(self.switch_frames):
      raise ValueError(f"{len(self.cuts)} cut flags for {len(self.switch_frames)} switches")
    if any(f < 0 for f in self.switch_frames):
      raise ValueError(f"switch frames {list(self.switch_frames)}: frames must be >= 0")
    if list(self.switch_frames) != sorted(self.switch_frames):
      raise ValueError(f"switch frames {list(self.switch_frames)} are not sorted")

  @property
  def has_cuts(self) -> bool:
    return any(self.cuts)

  @property
  def num_prompts(self) -> int:
    return len(self.switch_frames) + 1

  def chunk_prompts(self, chunk_starts: Sequence[int]) -> list[tuple[int, bool]]:
    """Per chunk (given its start frame): (prompt index, whether the switch to it happens at this chunk)."""
    out, k = [], 0
    for c in chunk_starts:
      switch = k < len(self.switch_frames) and c >= self.switch_frames[k]
      k += switch
      out.append((k, bool(switch)))
    return out

  def check(self, total_frames: int) -> None:
    """Raises naming the switch that can never happen in a video of `total_frames` frames."""
    late = [f for f in self.switch_frames if f >= total_frames]
    if late:
      raise ValueError(f"switch frame {late[0]} is past the end of the video ({total_frames} frames)")
