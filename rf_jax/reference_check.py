"""`rf-jax check-reference DIR`: hold the port to outputs of the real PyTorch code.

A DiT reference folder holds `config.json` (`constructor_args`, geometry, `scheduler`, ...), `model.safetensors`
(PyTorch state-dict keys) and any of:
  rope.npz           `causal_rope_apply` at start frames 0 and 7, and the float64 `freqs` table
  forward_train.npz  one block-causal training-style forward with its intermediate activations
  rollout.npz        an autoregressive rollout with its memory policy (see `reference_rollout`)
A umT5 folder holds `t5.npz` instead (`rf_jax.text.reference`), a VAE folder `vae.npz` (`rf_jax.vae.reference`). Each compared array gets one line: name, metric, and PASS/FAIL at the tolerance. Forward arrays use the relative
error ||out - ref|| / ||ref||; rollout arrays the max absolute difference; integer and boolean arrays (selections,
promotions, slot tables, masks) must match exactly.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rf_jax.config import ModelConfig, from_constructor_args, memory_args_from_constructor_args

DEFAULT_TOLERANCE = 1e-4  # relative error of forward-pass arrays
DEFAULT_ABS_TOLERANCE = 1e-5  # max |difference| of rollout arrays (a wrong memory decision moves them by > 1e-2)


@dataclasses.dataclass(frozen=True)
class Comparison:
  """One compared array: `metric` is rel_err (||out - ref|| / ||ref||), max_abs (max |out - ref|, NaNs must sit
  in the same places) or mismatch (fraction of integer/boolean entries that differ; tolerance 0)."""
  name: str
  rel_err: float
  tolerance: float
  metric: str = "rel_err"

  @property
  def value(self) -> float:
    return self.rel_err

  @property
  def passed(self) -> bool:
    return bool(np.isfinite(self.rel_err) and self.rel_err <= self.tolerance)

  def line(self) -> str:
    return f"{self.name:<40s} {self.metric}={self.rel_err:.3e}  {'PASS' if self.passed else 'FAIL'}"


def max_abs_error(out: np.ndarray, ref: np.ndarray) -> float:
  """max |out - ref| over the finite entries of ref; inf if the shapes or the NaN patterns differ."""
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  if out.shape != ref.shape or not np.array_equal(np.isnan(out), np.isnan(ref)):
    return float("inf")
  finite = ~np.isnan(ref)
  return float(np.max(np.abs(out[finite] - ref[finite]), initial=0.0))


def mismatch(out: np.ndarray, ref: np.ndarray) -> float:
  out, ref = np.asarray(out), np.asarray(ref)
  if out.shape != ref.shape:
    return float("inf")
  return float(np.mean(out != ref)) if ref.size else 0.0


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
  out, ref = np.asarray(out), np.asarray(ref)
  if out.shape != ref.shape:
    return float("inf")
  if ref.dtype == bool:
    return float(np.mean(out != ref)) if ref.size else 0.0
  out, ref = out.astype(np.float64), ref.astype(np.float64)
  denom = np.linalg.norm(ref)
  diff = np.linalg.norm(out - ref)
  return float(diff / denom) if denom > 0 else float(diff)


def read_reference_folder(path: str) -> tuple[dict, str, list]:
  """A reference folder's config.json (which must hold `constructor_args`), its path, and the tensors of its
  model.safetensors (listed, not read)."""
  from rf_jax.convert.readers import open_source
  cfg_path = os.path.join(path, "config.json")
  try:
    with open(cfg_path) as f:
      config = json.load(f)
  except FileNotFoundError:
    raise ValueError(f"{path}: no config.json") from None
  if "constructor_args" not in config:
    raise ValueError(f"{cfg_path}: missing 'constructor_args'")
  weights = os.path.join(path, "model.safetensors")
  if not os.path.exists(weights):
    raise ValueError(f"{path}: no model.safetensors")
  return config, cfg_path, open_source(weights)[0]


@dataclasses.dataclass(frozen=True)
class ReferenceFolder:
  path: str
  config: dict
  model_config: ModelConfig

  @classmethod
  def open(cls, path: str | os.PathLike) -> "ReferenceFolder":
    path = os.fspath(path)
    cfg_path = os.path.join(path, "config.json")
    if not os.path.isdir(path):
      raise ValueError(f"{path}: not a folder")
    try:
      with open(cfg_path) as f:
        config = json.load(f)
    except FileNotFoundError:
      raise ValueError(f"{path}: no config.json; a reference folder holds config.json and model.safetensors") from None
    if "constructor_args" not in config:
      raise ValueError(f"{cfg_path}: missing 'constructor_args'")
    return cls(path, config, from_constructor_args(config["constructor_args"]))

  def npz(self, name: str) -> dict[str, np.ndarray] | None:
    p = os.path.join(self.path, name)
    if not os.path.exists(p):
      return None
    with np.load(p) as z:
      return {k: z[k] for k in z.files}

  @property
  def chunk_frames(self) -> int:
    return int(self.config.get("num_frame_per_block", self.config.get("pipeline_args", {})
                               .get("num_frame_per_block", 3)))

  def load_model(self, dtype=jnp.float32):
    from rf_jax.registry import model_from_params, nest
    from rf_jax.convert import convert_tensors, open_source
    weights = os.path.join(self.path, "model.safetensors")
    if not os.path.exists(weights):
      raise ValueError(f"{self.path}: no model.safetensors")
    tensors, _ = open_source(weights)
    params = convert_tensors(tensors, self.model_config)
    return model_from_params(self.model_config, nest({p: jnp.asarray(v) for p, v in params.items()}), dtype=dtype)


def _to_channels_last(x: np.ndarray) -> jax.Array:
  return jnp.asarray(x).transpose(0, 2, 3, 4, 1)  # [B, C, F, H, W] -> [B, F, H, W, C]


def check_rope(ref: ReferenceFolder, z: dict, tol: float) -> Iterator[Comparison]:
  from rf_jax.model.rope import apply_rope, rope_angles_table, rope_cos_sin
  hd = ref.model_config.head_dim
  if "freqs_real" in z:
    angles = rope_angles_table(hd, z["freqs_real"].shape[0])
    yield Comparison("rope/freqs_real", relative_error(np.cos(angles), z["freqs_real"]), tol)
    yield Comparison("rope/freqs_imag", relative_error(np.sin(angles), z["freqs_imag"]), tol)
  x = z["x"]  # [B, L, N, H] with grid (F, Hp, Wp)
  f, hp, wp = (int(g) for g in np.asarray(z["grid_sizes"]).reshape(-1, 3)[0])
  xf = jnp.asarray(x).reshape(x.shape[0], f, hp * wp, x.shape[2], x.shape[3])
  for key in sorted(k for k in z if k.startswith("out_start")):
    start = int(key[len("out_start"):])
    cos, sin = rope_cos_sin(jnp.arange(start, start + f), (hp, wp), hd)
    out = np.asarray(apply_rope(xf, cos, sin)).reshape(x.shape)
    yield Comparison(f"rope/{key}", relative_error(out, z[key]), tol)


def check_forward(ref: ReferenceFolder, z: dict, model, tol: float) -> Iterator[Comparison]:
  from rf_jax.model import block_causal_mask
  from rf_jax.sampling import FlowSchedule
  cfg = ref.model_config
  local_attn, _ = memory_args_from_constructor_args(ref.config["constructor_args"])
  x = _to_channels_last(z["x"])
  t = jnp.asarray(z["t"], jnp.float32)
  context = jnp.asarray(z["context"])
  b, f, hl, wl, _ = x.shape
  q_len = (hl // cfg.patch_size[1]) * (wl // cfg.patch_size[2])
  if "attn_mask" in z:
    mask = block_causal_mask(f, q_len, ref.chunk_frames, local_attn)
    yield Comparison("forward/attn_mask", relative_error(mask, z["attn_mask"]), tol)

  forward = nnx.capture(lambda m, *a, **k: m.forward_train(*a, **k), nnx.Intermediate)
  flow, acts = forward(model, x, t, context, chunk_frames=ref.chunk_frames, local_window_frames=local_attn)
  yield Comparison("forward/out", relative_error(np.asarray(flow).transpose(0, 4, 1, 2, 3), z["out"]), tol)
  if "x0_pred" in z:
    schedule = FlowSchedule.from_reference(ref.config.get("scheduler", {}))
    x0 = np.asarray(schedule.x0_from_flow(x, flow, t)).transpose(0, 4, 1, 2, 3)
    yield Comparison("forward/x0_pred", relative_error(x0, z["x0_pred"]), tol)
  layouts: dict[str, Callable[[np.ndarray], np.ndarray]] = {
      "act_patch_embedding": lambda a: a.transpose(0, 4, 1, 2, 3),  # ours [B, F, Hp, Wp, D]
  }
  for name in sorted(k for k in z if k.startswith("act_")):
    if name not in acts:
      yield Comparison(f"forward/{name}", float("inf"), tol)
      continue
    value = np.asarray(acts[name].get_value()[0])
    value = layouts.get(name, lambda a: a)(value)
    yield Comparison(f"forward/{name}", relative_error(value.reshape(z[name].shape) if value.size == z[name].size
                                                       else value, z[name]), tol)


def check_reference(path: str | os.PathLike, *, tolerance: float = DEFAULT_TOLERANCE,
                    abs_tolerance: float = DEFAULT_ABS_TOLERANCE,
                    emit: Callable[[str], None] = print) -> tuple[list[Comparison], list[str]]:
  """Runs every check the folder has files for. Returns (comparisons, notes about files not checked)."""
  from rf_jax.reference_rollout import check_rollout, unchecked_arrays
  results: list[Comparison] = []
  notes: list[str] = []

  def run(checks):
    for c in checks:
      emit(c.line())
      results.append(c)

  t5 = os.path.join(os.fspath(path), "t5.npz")
  if os.path.exists(t5):  # a umT5 text-encoder folder
    from rf_jax.text.reference import check_t5
    with np.load(t5) as z, jax.default_matmul_precision("highest"):
      run(check_t5(os.fspath(path), {k: z[k] for k in z.files}, tolerance))
    return results, notes
  vae = os.path.join(os.fspath(path), "vae.npz")
  if os.path.exists(vae):  # a Wan VAE folder
    from rf_jax.vae.reference import check_vae
    with np.load(vae) as z, jax.default_matmul_precision("highest"):
      run(check_vae(os.fspath(path), {k: z[k] for k in z.files}, tolerance))
    notes.append("vae.npz: stream6_raw (the demo's differing streaming decoder) is not our target; not compared")
    return results, notes

  ref = ReferenceFolder.open(path)
  known = ("rope.npz", "forward_train.npz", "rollout.npz")

  with jax.default_matmul_precision("highest"):
    rope = ref.npz("rope.npz")
    if rope is not None:
      run(check_rope(ref, rope, tolerance))
    forward = ref.npz("forward_train.npz")
    rollout = ref.npz("rollout.npz")
    model = ref.load_model() if forward is not None or rollout is not None else None
    if forward is not None:
      run(check_forward(ref, forward, model, tolerance))
    if rollout is not None:
      run(check_rollout(ref, rollout, model, abs_tolerance))
      left = unchecked_arrays(rollout, results)
      if left:
        notes.append(f"rollout.npz: not compared: {', '.join(left)}")
  for name in sorted(os.listdir(ref.path)):
    if name.endswith(".npz") and name not in known:
      notes.append(f"{name}: not checked by this version of rf_jax")
  if not results:
    raise ValueError(f"{ref.path}: nothing to compare (no rope.npz, forward_train.npz or rollout.npz)")
  return results, notes
