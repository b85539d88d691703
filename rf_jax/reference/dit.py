"""The DiT's parity checks: RoPE (`rope.npz`) and one block-causal training-style forward with its intermediate
activations (`forward_train.npz`), through the model's `forward_with_activations` entry."""

from __future__ import annotations

from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.config import memory_args_from_constructor_args
from rf_jax.reference.compare import Comparison, relative_error
from rf_jax.reference.folder import ReferenceFolder


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

  flow, acts = model.forward_with_activations(x, t, context, chunk_frames=ref.chunk_frames,
                                             local_window_frames=local_attn)
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
    value = np.asarray(acts[name])
    value = layouts.get(name, lambda a: a)(value)
    yield Comparison(f"forward/{name}", relative_error(value.reshape(z[name].shape) if value.size == z[name].size
                                                       else value, z[name]), tol)
