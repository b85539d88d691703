"""How a seed becomes random numbers, the one convention `generate`, `sweep` and the benchmarks share.

    key(seed) -> split -> (noise key, text key)

The noise key draws the rollout's noise (`Rollout.run(key=...)`); the text key draws the seeded random prompt a
preset runs with when no text is given. A sample's noise depends on its seed alone, so `sweep` reproduces what
`generate --seed S --batch 1` writes.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np


class SeedKeys(NamedTuple):
  noise: jax.Array
  text: jax.Array


def seed_keys(seed: int) -> SeedKeys:
  noise, text = jax.random.split(jax.random.key(seed))
  return SeedKeys(noise, text)


def noise_keys(seeds: Sequence[int]) -> jax.Array:
  """[len(seeds)] noise keys, one per sample (each drawn as `seed_keys(s).noise`)."""
  return jnp.stack([seed_keys(s).noise for s in seeds])


def random_text(seed: int, batch: int, text_len: int, text_dim: int) -> np.ndarray:
  """The seeded random prompt embedding: float32 [batch, text_len, text_dim] from `seed_keys(seed).text`."""
  return np.asarray(jax.random.normal(seed_keys(seed).text, (batch, text_len, text_dim), jnp.float32))
