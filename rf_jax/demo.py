"""The built-in demo model: a small causal DiT trained in four stages (configs/train/demo_base.py, demo.py,
demo_sc.py, demo_fade.py) on the bouncing-shapes dataset, in pixel space (32x32 RGB frames, one frame per "latent"
frame), unconditional (its text context is zeros).

Shipped in the package as rf_jax/assets/demo/{model.safetensors, demo.json}: float32 EMA weights by Flax path, and
the model config, the few-step sampler fitted to it, the memory policy it runs with (`memory`) and where it came
from. `rf-jax generate` uses it when no --checkpoint or --preset is given. Loading reads tensors only
(safetensors): nothing is unpickled.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

ASSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo")
FPS = 16


def available() -> bool:
  return os.path.isfile(os.path.join(ASSET_DIR, "model.safetensors"))


def load_info(folder: str | None = None) -> dict[str, Any]:
  folder = folder or ASSET_DIR
  path = os.path.join(folder, "demo.json")
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise ValueError(f"the demo model is not installed ({path} is missing); give --checkpoint or --preset") from None


def load_demo(folder: str | None = None, *, dtype=None, attn_impl: str = "auto"):
  """(CausalWanDiT, info) of the shipped demo."""
  folder = folder or ASSET_DIR
  import jax.numpy as jnp
  from safetensors.numpy import load_file
  from rf_jax.registry import model_from_params, nest, param_shapes
  from rf_jax.config import ModelConfig
  info = load_info(folder)
  config = ModelConfig.from_dict(info["model"], source=os.path.join(folder, "demo.json"))
  tensors = load_file(os.path.join(folder, "model.safetensors"))
  shapes = param_shapes(config)
  flat = {}
  for path, shape in shapes.items():
    key = ".".join(map(str, path))
    if key not in tensors or tensors[key].shape != shape:
      raise ValueError(f"{folder}/model.safetensors: {key} is missing or not {shape}")
    flat[path] = jnp.asarray(tensors[key])
  if len(tensors) != len(shapes):
    raise ValueError(f"{folder}/model.safetensors: {len(tensors) - len(shapes)} tensors the model does not have")
  return model_from_params(config, nest(flat), dtype=dtype or jnp.float32, attn_impl=attn_impl), info


def write_demo(folder: str, config, params: dict, info: dict[str, Any]) -> None:
  """Writes the demo files from a trained model's (EMA) parameters (nested dict)."""
  from safetensors.numpy import save_file
  from rf_jax.registry import flatten
  from rf_jax.io import write_json_atomic
  os.makedirs(folder, exist_ok=True)
  flat = {".".join(map(str, p)): np.ascontiguousarray(np.asarray(v, np.float32)) for p, v in flatten(params).items()}
  save_file(flat, os.path.join(folder, "model.safetensors"))
  write_json_atomic(os.path.join(folder, "demo.json"), {"model": config.to_dict(), **info})


def rollout_check(model, info: dict[str, Any], *, policy=None, frames: int = 96, samples: int = 4,
                  seed: int = 0, last: int = 32) -> dict[str, float]:
  """How the demo's own rollouts compare with the dataset in their first second (frames 3-15: after the first
  chunk) and over their last `last` frames: `samples` videos of `frames` frames (default policy: the demo's memory,
  info["memory"], as `rf-jax generate` runs it; Relax Forcing's defaults when info has none) against as many dataset
  clips.

  motion_vs_data      mean per-frame motion / the dataset's
  foreground_vs_data  fraction of shape pixels / the dataset's
  consistency         frame 0's shape colours still present (`shape_curves`; the dataset's is given alongside)
  """
  import jax
  import jax.numpy as jnp
  from rf_jax.data.shapes import ShapesConfig, shape_curves, shapes_clip
  from rf_jax.memory import RelaxPolicy, policy_from_dict
  from rf_jax.sampling import Rollout, Sampler
  s, (h, w) = info["sampler"], info["frame_hw"]
  sampler = Sampler.from_steps(s["steps"], shift=s["shift"], eta=s.get("eta", 1.0), chunk_frames=3)
  if policy is None:
    policy = policy_from_dict(info["memory"], source="demo memory") if "memory" in info else RelaxPolicy()
  rollout = Rollout(model, policy, sampler, batch=samples, latent_hw=(h, w), frames=frames)
  videos = np.asarray(rollout.run(jnp.zeros((samples, model.config.text_len, model.config.text_dim)),
                                  key=jax.random.key(seed))[0])
  data_cfg = ShapesConfig(size=h, frames=frames)
  data = np.stack([shapes_clip(data_cfg, seed=999, index=i) for i in range(samples)])
  got, want = shape_curves(videos), shape_curves(data)
  out = {"frames": frames, "samples": samples}
  for name, span in (("first_second", slice(3, FPS)), ("last", slice(-last, None))):
    mean = lambda c, k: float(c[k][:, span].mean())  # noqa: E731
    out[name] = {"motion_vs_data": round(mean(got, "motion") / mean(want, "motion"), 4),
                 "foreground_vs_data": round(mean(got, "foreground") / mean(want, "foreground"), 4),
                 "consistency": round(mean(got, "consistency"), 4),
                 "data_consistency": round(mean(want, "consistency"), 4)}
  out["last"]["frames"] = last
  return out
