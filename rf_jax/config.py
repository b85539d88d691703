"""Typed, frozen model configuration for the causal Wan2.1 DiT, its presets and loaders.

The config holds the architecture only. How keys and values are remembered across chunks (window, sink, Relax
Forcing, ...) is memory policy and lives with the rollout, not here: Self-Forcing's `local_attn_size` and
`sink_size` constructor arguments are read by `memory_args_from_constructor_args`, not stored in `ModelConfig`.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
from typing import Any, Mapping

__all__ = [
    "ModelConfig",
    "PRESETS",
    "TINY",
    "WAN21_T2V_1_3B",
    "WAN21_T2V_14B",
    "get_preset",
    "from_wan_config",
    "from_constructor_args",
    "memory_args_from_constructor_args",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """Architecture of a causal Wan2.1 text-to-video DiT (names follow `CausalWanModel.__init__`)."""

  dim: int  # model width D
  ffn_dim: int  # FFN hidden width
  num_heads: int  # attention heads N; head_dim = dim // num_heads
  num_layers: int  # transformer blocks L
  in_dim: int = 16  # latent channels in
  out_dim: int = 16  # latent channels out
  freq_dim: int = 256  # width of the sinusoidal time embedding
  text_dim: int = 4096  # width of the text-encoder output (umT5-XXL)
  text_len: int = 512  # context rows after zero padding
  patch_size: tuple[int, int, int] = (1, 2, 2)  # (frames, height, width)
  eps: float = 1e-6  # every LayerNorm and RMSNorm
  qk_norm: bool = True  # RMSNorm on q and k (full width, before the head split)
  cross_attn_norm: bool = True  # affine LayerNorm `norm3` before cross-attention
  model_type: str = "t2v"
  # What the head's output is. "flow" (Wan, Self-Forcing): the flow eps - x0 itself. "x0" (rf_jax's small
  # pixel-space models): the clean sample, returned as the flow it implies, (x_t - x0) / max(sigma, 0.05) with
  # sigma = t / 1000 -- predicting the clean sample is what a narrow model can do in pixel space, where the noise is
  # as wide as the patch (Li & He, "Back to Basics: Let Denoising Generative Models Denoise", 2025).
  prediction: str = "flow"

  def __post_init__(self):
    for name in ("dim", "ffn_dim", "num_heads", "num_layers", "in_dim", "out_dim", "freq_dim", "text_dim",
                 "text_len"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
    if self.dim % self.num_heads:
      raise ValueError(f"ModelConfig.dim={self.dim} is not divisible by num_heads={self.num_heads}")
    if self.head_dim % 2:
      raise ValueError(f"ModelConfig head_dim = dim / num_heads = {self.head_dim} must be even (RoPE pairs)")
    if self.freq_dim % 2:
      raise ValueError(f"ModelConfig.freq_dim={self.freq_dim} must be even (cos and sin halves)")
    patch = tuple(self.patch_size)
    if len(patch) != 3 or any(not isinstance(p, int) or p <= 0 for p in patch):
      raise ValueError(f"ModelConfig.patch_size must be three positive integers, got {self.patch_size!r}")
    object.__setattr__(self, "patch_size", patch)
    if not (isinstance(self.eps, (int, float)) and self.eps > 0):
      raise ValueError(f"ModelConfig.eps must be a positive number, got {self.eps!r}")
    if self.model_type != "t2v":
      raise ValueError(f"ModelConfig.model_type={self.model_type!r} is not supported: only 't2v' (text-to-video)"
                       " is ported; the i2v image branch (img_emb) is not")
    if self.prediction not in ("flow", "x0"):
      raise ValueError(f"ModelConfig.prediction={self.prediction!r}; expected 'flow' or 'x0'")
    if self.prediction == "x0" and self.in_dim != self.out_dim:
      raise ValueError(f"ModelConfig.prediction='x0' needs in_dim == out_dim (got {self.in_dim}, {self.out_dim})")

  @property
  def head_dim(self) -> int:
    return self.dim // self.num_heads

  @property
  def patch_volume(self) -> int:
    return self.patch_size[0] * self.patch_size[1] * self.patch_size[2]

  def rope_pairs(self) -> tuple[int, int, int]:
    """Complex pairs of the head dim given to (frame, height, width) RoPE: [c - 2*(c//3), c//3, c//3]."""
    c = self.head_dim // 2
    return (c - 2 * (c // 3), c // 3, c // 3)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["patch_size"] = list(self.patch_size)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], *, source: str = "config") -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"{source}: unknown ModelConfig keys {unknown}; known keys are {sorted(known)}")
    kwargs = dict(d)
    if "patch_size" in kwargs:
      kwargs["patch_size"] = tuple(kwargs["patch_size"])
    return cls(**kwargs)

  def num_params(self) -> int:
    """Parameter count from the shapes alone (equals the PyTorch state dict's element count)."""
    D, F, T, L = self.dim, self.ffn_dim, self.freq_dim, self.num_layers
    linear = lambda i, o: i * o + o  # noqa: E731
    top = (D * self.in_dim * self.patch_volume + D  # patch_embedding
           + linear(self.text_dim, D) + linear(D, D)  # text_embedding
           + linear(T, D) + linear(D, D)  # time_embedding
           + linear(D, 6 * D)  # time_projection
           + 2 * D + linear(D, self.out_dim * self.patch_volume))  # head
    qk = 2 * D if self.qk_norm else 0
    block = (6 * D + 4 * linear(D, D) + qk  # modulation, self_attn
             + (2 * D if self.cross_attn_norm else 0) + 4 * linear(D, D) + qk  # norm3, cross_attn
             + linear(D, F) + linear(F, D))  # ffn
    return top + L * block


TINY = ModelConfig(dim=128, ffn_dim=256, num_heads=4, num_layers=2, freq_dim=64, text_dim=64, text_len=32)
WAN21_T2V_1_3B = ModelConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
WAN21_T2V_14B = ModelConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)

PRESETS: dict[str, ModelConfig] = {
    "tiny": TINY,
    "wan2.1-t2v-1.3b": WAN21_T2V_1_3B,
    "wan2.1-t2v-14b": WAN21_T2V_14B,
}


def get_preset(name: str) -> ModelConfig:
  try:
    return PRESETS[name]
  except KeyError:
    raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}") from None


# Keys a Wan2.1 `config.json` (diffusers ModelMixin format, read by `from_pretrained`) may hold.
_WAN_JSON_KEYS = {"dim", "eps", "ffn_dim", "freq_dim", "in_dim", "model_type", "num_heads", "num_layers", "out_dim",
                  "text_len", "patch_size", "text_dim", "qk_norm", "cross_attn_norm", "window_size"}
_WAN_JSON_IGNORED = {"_class_name", "_diffusers_version", "window_size"}


def from_wan_config(source: str | os.PathLike | Mapping[str, Any]) -> ModelConfig:
  """Reads a Wan2.1 `config.json` (the one `WanModel.from_pretrained` reads), or its parsed dict.

  `patch_size`, `text_dim`, `qk_norm` and `cross_attn_norm` are absent from the released files (diffusers
  `ignore_for_config`), so the `__init__` defaults apply, exactly as in PyTorch.
  """
  name = "config"
  if not isinstance(source, Mapping):
    name = os.fspath(source)
    try:
      with open(name) as f:
        source = json.load(f)
    except FileNotFoundError:
      raise ValueError(f"{name}: no such Wan config.json") from None
    except json.JSONDecodeError as e:
      raise ValueError(f"{name}: not valid JSON ({e})") from None
  if "num_attention_heads" in source or "attention_head_dim" in source:
    raise ValueError(f"{name}: this is a diffusers `WanTransformer3DModel` config (renamed keys); pass the "
                     "original Wan2.1 `config.json` (keys dim, num_heads, ...) instead")
  unknown = sorted(set(source) - _WAN_JSON_KEYS - _WAN_JSON_IGNORED)
  if unknown:
    raise ValueError(f"{name}: unexpected keys {unknown} in a Wan2.1 config.json")
  missing = sorted({"dim", "ffn_dim", "num_heads", "num_layers"} - set(source))
  if missing:
    raise ValueError(f"{name}: missing required keys {missing}")
  kwargs = {k: v for k, v in source.items() if k in _WAN_JSON_KEYS - _WAN_JSON_IGNORED}
  return ModelConfig.from_dict(kwargs, source=name)


# KV-memory kwargs of the causal model (Self-Forcing's window, Relax Forcing's and Context Forcing's memories):
# they describe the memory policy, not the architecture.
_CAUSAL_ONLY_ARGS = ("local_attn_size", "sink_size",
                     "sink_frames", "hist_frames", "tail_frames", "hist_position_idx", "num_hist_candidates",
                     "lambda_redundancy", "contiguous_rope",
                     "rope_length", "cache_size", "num_new_context_tokens", "keyframe_sample", "keyframe_interval")


def from_constructor_args(args: Mapping[str, Any]) -> ModelConfig:
  """Builds the config from `CausalWanModel(**args)` kwargs (a fixture's `constructor_args`).

  The causal model's memory kwargs (`local_attn_size`, `sink_size`, and those of Relax / Context Forcing) describe
  the KV memory, not the architecture, and are skipped here: see `memory_args_from_constructor_args` and a
  folder's `memory` block.
  """
  kwargs = {k: v for k, v in args.items() if k not in _CAUSAL_ONLY_ARGS}
  return ModelConfig.from_dict(kwargs, source="constructor_args")


def memory_args_from_constructor_args(args: Mapping[str, Any]) -> tuple[int, int]:
  """(local_attn_size, sink_size) in latent frames, with the Self-Forcing defaults (-1, 0)."""
  return int(args.get("local_attn_size", -1)), int(args.get("sink_size", 0))


def load_python_value(path: str, name: str, kind: type, *, what: str, expected: str):
  """Runs the Python file `path` (a sweep or training config) and returns its `name`, which must be a `kind`.

  what: how errors name the file ("sweep file"); expected: how they name the value ("SWEEP = rf_jax.sweep.Sweep(...)").
  """
  import importlib.util
  if not os.path.isfile(path):
    raise ValueError(f"{what} {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"rf_jax_{name.lower()}_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ValueError(f"{path}:{e.lineno}: {what}: syntax error: {e.msg}") from None
  except Exception as e:  # noqa: BLE001  the file's own mistake (an unknown keyword, a bad value, a missing name)
    import traceback
    frames = [fr for fr in traceback.extract_tb(e.__traceback__) if os.path.abspath(fr.filename) == os.path.abspath(path)]
    where = f"{path}:{frames[-1].lineno}" if frames else path
    raise ValueError(f"{where}: {what}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
  value = getattr(module, name, None)
  if not isinstance(value, kind):
    raise ValueError(f"{path}: defines no {expected}")
  return value


# ------------------------------------------------------------------------------------------------ mesh axes and dtypes

# The device mesh's axes, named once for the whole package (rf_jax.parallel builds meshes with them; the sharded
# attention maps over them): samples split over data x fsdp, attention heads over tensor.
MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
HEAD_AXIS = "tensor"


class Setting(enum.Enum):
  """A typed setting spelled as a string in files and on the command line; `parse` takes either."""

  @classmethod
  def what(cls) -> str:
    """How an error names the setting."""
    return "setting"

  @classmethod
  def parse(cls, value):
    if isinstance(value, cls):
      return value
    try:
      return cls(value)
    except ValueError:
      raise ValueError(f"{cls.what()} {value!r}; expected one of {', '.join(v.value for v in cls)}") from None


class ComputeDtype(Setting):
  """The dtype the models compute in (parameters stay float32 unless a checkpoint stores them otherwise)."""
  FLOAT32 = "float32"
  BFLOAT16 = "bfloat16"

  @classmethod
  def what(cls) -> str:
    return "compute dtype"

  @property
  def jnp(self):
    import jax.numpy as jnp
    return {ComputeDtype.FLOAT32: jnp.float32, ComputeDtype.BFLOAT16: jnp.bfloat16}[self]
