"""The one reader of a reference folder: `config.json` (with the PyTorch `constructor_args`), `model.safetensors`
(PyTorch state-dict keys, read without unpickling) and the .npz files of outputs the real code wrote."""

from __future__ import annotations

import dataclasses
import json
import os

import jax.numpy as jnp
import numpy as np

from rf_jax.config import ModelConfig, from_constructor_args


@dataclasses.dataclass(frozen=True)
class ReferenceFolder:
  """A reference folder. `model_config` is the DiT's (None for a umT5 or VAE folder, whose configs their checks
  read from `config`)."""
  path: str
  config: dict
  model_config: ModelConfig | None

  @property
  def config_path(self) -> str:
    return os.path.join(self.path, "config.json")

  def tensors(self) -> dict:
    """model.safetensors's tensors by PyTorch key (listed lazily, read when used)."""
    from rf_jax.convert.readers import open_source
    weights = os.path.join(self.path, "model.safetensors")
    if not os.path.exists(weights):
      raise ValueError(f"{self.path}: no model.safetensors")
    return open_source(weights)[0]

  def has(self, name: str) -> bool:
    return os.path.exists(os.path.join(self.path, name))

  @classmethod
  def open(cls, path: str | os.PathLike, *, dit: bool = True) -> "ReferenceFolder":
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
    return cls(path, config, from_constructor_args(config["constructor_args"]) if dit else None)

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
    """The folder's DiT, converted from its PyTorch weights."""
    from rf_jax.convert import convert_tensors
    from rf_jax.registry import model_from_params, nest
    params = convert_tensors(self.tensors(), self.model_config)
    return model_from_params(self.model_config, nest({p: jnp.asarray(v) for p, v in params.items()}), dtype=dtype)
