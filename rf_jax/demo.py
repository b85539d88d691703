"""The built-in demo models: small causal DiTs trained on the bouncing-shapes dataset in pixel space (32x32 RGB
frames, one frame per "latent" frame).

  Demo.SHAPES    rf_jax/assets/demo: four stages (configs/train/demo_base.py, demo.py, demo_sc.py, demo_fade.py),
                 unconditional (its text context is zeros). The default.
  Demo.BACKDROP  rf_jax/assets/demo_backdrop: SHAPES fine-tuned (configs/train/demo_backdrop.py) to read a one-word
                 prompt, the backdrop colour (black, blue, green, red, purple), and to follow a prompt switch.

Each folder holds {model.safetensors, demo.json}: float32 EMA weights by Flax path, and the model config, the few-step
sampler fitted to it, the memory policy it runs with (`memory`), where it came from, and for a conditional demo its
prompts (`prompts`: a `WordEncoder`'s table) and `default_prompt`. `rf-jax generate` uses one when no --checkpoint or
--preset is given (`--demo`). Loading reads tensors and JSON only (safetensors): nothing is unpickled.
"""

from __future__ import annotations

import enum
import json
import os
from typing import Any

import numpy as np

ASSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo")
BACKDROP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "demo_backdrop")
FPS = 16


class Demo(enum.Enum):
  SHAPES = "shapes"  # unconditional
  BACKDROP = "backdrop"  # a one-word prompt: the backdrop colour

  @property
  def folder(self) -> str:
    return ASSET_DIR if self is Demo.SHAPES else BACKDROP_DIR


def word_encoder(info: dict[str, Any]):
  """A conditional demo's prompt encoder (`rf_jax.text.words.WordEncoder`), None for an unconditional one."""
  if "prompts" not in info:
    return None
  from rf_jax.text.words import WordEncoder
  return WordEncoder.from_dict(info["prompts"])


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
  """(CausalWanDiT, info) of a demo folder (default: the shipped Demo.SHAPES)."""
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
  from rf_jax.data.shapes import BACKDROPS, ShapesConfig, shape_curves, shapes_clip
  from rf_jax.memory import RelaxPolicy, policy_from_dict
  from rf_jax.sampling import Rollout, Sampler
  s, (h, w) = info["sampler"], info["frame_hw"]
  sampler = Sampler.from_steps(s["steps"], shift=s["shift"], eta=s.get("eta", 1.0), chunk_frames=3)
  if policy is None:
    policy = policy_from_dict(info["memory"], source="demo memory") if "memory" in info else RelaxPolicy()
  rollout = Rollout(model, policy, sampler, batch=samples, latent_hw=(h, w), frames=frames)
  words = word_encoder(info)
  text = (np.zeros((samples, model.config.text_len, model.config.text_dim), np.float32) if words is None
          else words([info["default_prompt"]] * samples, model.config.text_len))
  videos = np.asarray(rollout.run(jnp.asarray(text), key=jax.random.key(seed))[0])
  data_cfg = ShapesConfig(size=h, frames=frames)
  background = BACKDROPS[info["default_prompt"]] if words is not None else data_cfg.background
  data = np.stack([shapes_clip(data_cfg, seed=999, index=i, background=background) for i in range(samples)])
  got, want = shape_curves(videos, background), shape_curves(data, background)
  out = {"frames": frames, "samples": samples}
  for name, span in (("first_second", slice(3, FPS)), ("last", slice(-last, None))):
    mean = lambda c, k: float(c[k][:, span].mean())  # noqa: E731
    out[name] = {"motion_vs_data": round(mean(got, "motion") / mean(want, "motion"), 4),
                 "foreground_vs_data": round(mean(got, "foreground") / mean(want, "foreground"), 4),
                 "consistency": round(mean(got, "consistency"), 4),
                 "data_consistency": round(mean(want, "consistency"), 4)}
  out["last"]["frames"] = last
  return out


def backdrop_distance(videos: np.ndarray, colour) -> np.ndarray:
  """[B, T]: how far each frame's backdrop is from `colour` (RGB in [0, 1]): the largest channel difference of the
  frame's per-channel median pixel (shapes cover a minority of the pixels), on [0, 1]. videos [B, T, H, W, 3] in
  [-1, 1]; `colour` [3] or per sample [B, 3]."""
  px = (np.clip(np.asarray(videos, np.float32), -1, 1) + 1) / 2
  median = np.median(px.reshape(*px.shape[:2], -1, 3), axis=2)  # [B, T, 3]
  colour = np.asarray(colour, np.float32).reshape(-1, 1, 3)
  return np.abs(median - colour).max(-1)


SWITCH_PAIRS = (("black", "red"), ("blue", "green"), ("red", "purple"), ("green", "black"), ("purple", "blue"))


def switch_check(model, info: dict[str, Any], *, frames: int = 96, switch: int = 48, pairs=SWITCH_PAIRS,
                 recache=None, seed: int = 0, near: float = 0.06) -> dict[str, Any]:
  """Does a prompt switch change a conditional demo's backdrop, and keep its shapes? One video per (a, b) in
  `pairs`, all in one batch: prompt a, then b from latent frame `switch` on, under the demo's memory and sampler
  (`recache`: the policy's default re-cache unless given).

  before         mean `backdrop_distance` to a's colour over the frames before the switch
  after          mean distance to b's colour over the last `frames - switch - 12` frames
  settle_frames  per pair: frames from the switch until the distance to b's colour is below `near` and stays so
  consistency    the frame-0 shape colours still present in the last frame (`shape_curves`, against each frame's
                 own backdrop), mean over pairs: the shapes survive the switch
  """
  import jax
  import jax.numpy as jnp
  from rf_jax.data.shapes import BACKDROPS, shape_curves
  from rf_jax.memory import policy_from_dict
  from rf_jax.sampling import PromptSchedule, Rollout, Sampler
  words = word_encoder(info)
  if words is None:
    raise ValueError("switch_check needs a conditional demo (its demo.json has no prompts)")
  s, (h, w) = info["sampler"], info["frame_hw"]
  sampler = Sampler.from_steps(s["steps"], shift=s["shift"], eta=s.get("eta", 1.0), chunk_frames=3)
  policy = policy_from_dict(info["memory"], source="demo memory")
  rollout = Rollout(model, policy, sampler, batch=len(pairs), latent_hw=(h, w), frames=frames, recache=recache)
  text_len = model.config.text_len
  context = np.stack([words([a for a, _ in pairs], text_len), words([b for _, b in pairs], text_len)])  # [2, B, P, D]
  videos = np.asarray(rollout.run(jnp.asarray(context), key=jax.random.key(seed),
                                  schedule=PromptSchedule(switch_frames=(switch,)))[0])
  first = np.asarray([BACKDROPS[a] for a, _ in pairs])
  second = np.asarray([BACKDROPS[b] for _, b in pairs])
  d_before = backdrop_distance(videos[:, :switch], first)
  d_after = backdrop_distance(videos[:, switch:], second)  # [B, frames - switch]
  settle = []
  for row in d_after:
    far = np.nonzero(row >= near)[0]
    settle.append(int(far[-1]) + 1 if len(far) else 0)
  per_frame = np.concatenate([np.repeat(first[:, None], switch, 1), np.repeat(second[:, None], frames - switch, 1)],
                             axis=1)  # [B, T, 3]: the backdrop each frame should have
  cons = shape_curves(videos, per_frame)["consistency"][:, -1]
  return {"frames": frames, "switch": switch, "pairs": [list(p) for p in pairs],
          "recache": rollout.recache.value,
          "before": round(float(d_before.mean()), 4), "after": round(float(d_after[:, 12:].mean()), 4),
          "settle_frames": settle, "consistency": round(float(np.mean(cons)), 4)}
