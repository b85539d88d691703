"""A sweep's results on disk: zarr v3 arrays through tensorstore.

    store.zarr/latents            [R, S, frames, C, H, W] float32, one chunk per run
    store.zarr/metrics/<name>     [R, S] float32 (rf_jax.metrics.NAMES)
NaN until written.
"""

from __future__ import annotations

import os

import numpy as np

from rf_jax.metrics import NAMES as METRICS


class Store:
  """The zarr v3 arrays of a sweep, through tensorstore."""

  def __init__(self, root: str, configs: int, samples: int, frames: int, latent_chw: tuple[int, int, int]):
    import tensorstore as ts
    self.root = root

    def array(name, shape, chunk):
      spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(root, name)},
              "metadata": {"shape": list(shape), "data_type": "float32", "fill_value": "NaN",
                           "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk)}},
                           "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                      {"name": "zstd", "configuration": {"level": 3, "checksum": False}}]}}
      return ts.open(spec, create=True, open=True).result()

    self.latents = array("latents", (configs, samples, frames, *latent_chw), (1, 1, frames, *latent_chw))
    self.metrics = {m: array(f"metrics/{m}", (configs, samples), (1, 1)) for m in METRICS}

  def write(self, config: int, first_sample: int, latents: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
    """Rows of one configuration: latents [n, frames, C, H, W], metrics {name: [n]}; returns when on disk."""
    n = latents.shape[0]
    futures = [self.latents[config, first_sample:first_sample + n].write(latents)]
    futures += [self.metrics[m][config, first_sample:first_sample + n].write(metrics[m]) for m in METRICS]
    for f in futures:
      f.result()

  def read_metrics(self) -> dict[str, np.ndarray]:
    return {m: self.metrics[m].read().result() for m in METRICS}
