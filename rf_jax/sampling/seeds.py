"""How a seed becomes random numbers, the one convention `generate`, `sweep` and the benchmarks share.

    key(seed) -> split -> (noise key, text key)

The noise key draws the rollout's noise (`Rollout.run(key=...)`, chunk by chunk: `chunk_noise`, or `sample_noise`
with one key per sample); the text key draws the seeded random prompt a
preset runs with when no text is given. A sample's noise depends on its seed alone, so `sweep` reproduces what
`generate --seed S --batch 1` writes.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


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


def chunk_noise(key: Array, chunk_index: Array, shape: tuple[int, ...], n_steps: int) -> tuple[Array, Array]:
  """The chunk's initial noise [B, F, ...] and re-noise draws [S - 1, B, F, ...] from one key: a chunk's noise
  depends only on (key, chunk index), never on how the rollout is split."""
  k0, k1 = jax.random.split(jax.random.fold_in(key, chunk_index))
  return (jax.random.normal(k0, shape, jnp.float32),
          jax.random.normal(k1, (max(n_steps - 1, 0), *shape), jnp.float32))


def sample_noise(keys: Array, chunk_index: Array, shape: tuple[int, ...], n_steps: int) -> tuple[Array, Array]:
  """`chunk_noise` with one key per sample (keys [B]): sample i gets exactly the noise a batch-1 rollout with key
  keys[i] gets, whatever batch it runs in. Returns [B, F, ...] and [S - 1, B, F, ...]."""
  x, eps = jax.vmap(lambda k: chunk_noise(k, chunk_index, (1, *shape[1:]), n_steps))(keys)
  return x[:, 0], jnp.moveaxis(eps[:, :, 0], 0, 1)
