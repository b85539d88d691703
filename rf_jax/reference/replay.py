"""A reference rollout replayed chunk by chunk with the folder's own noise, so that the memory can be read after
every chunk: the one loop the rollout checks share."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.reference.compare import channels_last
from rf_jax.sampling import Rollout


class Noise(NamedTuple):
  noise: np.ndarray  # [B, frames, H, W, C]
  renoise: np.ndarray  # [chunks, S - 1, B, F, H, W, C]


def folder_noise(z: dict, chunk_frames: int, steps: int) -> Noise:
  """rollout.npz's noise (fixture layout [B, frames, C, H, W]) and re-noise draws (draw F*j+i is [B*F, C, H, W])."""
  noise = channels_last(z["noise"])
  b, frames, hl, wl, c = noise.shape
  chunks = frames // chunk_frames
  return Noise(noise, channels_last(z["renoise"]).reshape(chunks, steps - 1, b, chunk_frames, hl, wl, c))


def replay_chunks(rollout: Rollout, z: dict, noise: Noise,
                  before: Callable[[int, object], tuple[object, object]] | None = None) -> tuple[list, list]:
  """Steps `rollout` through every chunk; returns (ChunkOut per chunk, the memory state after each), on the host.
  `before(j, state) -> (state, text)` may change the state and the prompt before chunk j (scene events); by
  default the text is the folder's `context` throughout."""
  f = rollout.sampler.chunk_frames
  text = None if before is not None else rollout.text_kv(jnp.asarray(z["context"]))
  state = rollout.init_state()
  outs, states = [], []
  for j in range(rollout.num_chunks):
    if before is not None:
      state, text = before(j, state)
    state, out = rollout.step(state, text, j, jnp.asarray(noise.noise[:, j * f:(j + 1) * f]),
                              jnp.asarray(noise.renoise[j]))
    outs.append(jax.tree.map(np.asarray, out))
    states.append(jax.tree.map(np.array, state))  # a copy: the state is donated to the next step
  return outs, states
