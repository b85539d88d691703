"""`rf-jax forward`: a block-causal forward of the DiT on seeded random latents and text, timed: a smoke run of
the whole model (and of a backend or a checkpoint) with no memory policy involved."""

from __future__ import annotations

import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rf_jax import pipeline
from rf_jax.config import ComputeDtype
from rf_jax.io import atomic_directory, write_json_atomic
from rf_jax.ops import AttnImpl


def forward_smoke(source: pipeline.DiTSource, out: str, *, frames: int = 6, batch: int = 1,
                  latent_hw: tuple[int, int] = (8, 8), chunk_frames: int = 3, timestep: float = 1000.0,
                  dtype: ComputeDtype = ComputeDtype.FLOAT32, attention: AttnImpl = AttnImpl.AUTO, seed: int = 0,
                  force: bool = False) -> dict[str, Any]:
  """Writes OUT/flow.npy and OUT/summary.json (first call = compile + run, then a steady call); returns the
  summary."""
  if os.path.exists(out) and not force:
    raise FileExistsError(f"{os.path.abspath(out)} already exists; pass --force to replace it")
  for flag, value in (("--frames", frames), ("--batch", batch), ("--chunk-frames", chunk_frames)):
    if value < 1:
      raise ValueError(f"{flag} {value} must be >= 1")
  if not 0 <= timestep <= 1000:
    raise ValueError(f"--timestep {timestep} must be in [0, 1000]")
  _, ph, pw = source.config().patch_size
  if min(latent_hw) < 1 or latent_hw[0] % ph or latent_hw[1] % pw:
    raise ValueError(f"--latent-hw {latent_hw[0]} {latent_hw[1]}: must be positive multiples of the model's patch "
                     f"({ph}, {pw})")
  model = pipeline.load_dit(source, dtype=dtype, attn_impl=attention)
  cfg = model.config
  kx, kc = jax.random.split(jax.random.key(seed))
  h, w = latent_hw
  x = jax.random.normal(kx, (batch, frames, h, w, cfg.in_dim))
  context = jax.random.normal(kc, (batch, cfg.text_len, cfg.text_dim))
  t = jnp.full((batch, frames), timestep, jnp.float32)
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, x, t, context):
    return nnx.merge(graphdef, state).forward_train(x, t, context, chunk_frames=chunk_frames)

  t0 = time.perf_counter()
  flow = jax.block_until_ready(run(state, x, t, context))
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  flow = jax.block_until_ready(run(state, x, t, context))
  steady = time.perf_counter() - t0
  summary = {"model": cfg.to_dict(), "frames": frames, "batch": batch, "latent_hw": [h, w],
             "compute_dtype": ComputeDtype.parse(dtype).value, "attention": model.attention_backend().value,
             "seed": seed, "first_call_seconds": round(first, 3), "steady_seconds": round(steady, 4),
             "flow_rms": float(jnp.sqrt(jnp.mean(flow**2))), "flow_shape": list(flow.shape),
             "device": str(jax.devices()[0]), "jax": jax.__version__}
  with atomic_directory(out, force=force) as tmp:
    np.save(os.path.join(tmp, "flow.npy"), np.asarray(flow))
    write_json_atomic(os.path.join(tmp, "summary.json"), summary)
  return summary
