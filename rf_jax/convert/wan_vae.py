"""Wan's VAE state dict (`Wan2.1_VAE.pth`, or a fixture's safetensors) -> `WanVAE` parameters, by the same strict
rule-table planner as the DiT (every key used, every parameter filled, every shape checked before reading)."""

from __future__ import annotations

import numpy as np

from rf_jax.convert.readers import SourceTensor
from rf_jax import registry
from rf_jax.convert.wan_dit import Rule, _conv3d, compile_rules
from rf_jax.vae.wan_vae import VAEConfig

Path = tuple[str | int, ...]


def _gamma(x: np.ndarray) -> np.ndarray:
  """RMS_norm gamma [C, 1, 1(, 1)] -> [C]."""
  return x.reshape(x.shape[0])


def _conv2d(x: np.ndarray) -> np.ndarray:
  """Conv2d weight [O, I, kh, kw] -> [kh, kw, I, O]."""
  return x.transpose(2, 3, 1, 0)


def _pointwise(x: np.ndarray) -> np.ndarray:
  """1x1 Conv2d weight [O, I, 1, 1] -> Linear kernel [I, O]."""
  return x.reshape(x.shape[0], x.shape[1]).T


_gamma.shape_of = lambda s: (s[0],) if len(s) in (3, 4) and all(d == 1 for d in s[1:]) else None
_conv2d.shape_of = lambda s: (s[2], s[3], s[1], s[0]) if len(s) == 4 else None
_pointwise.shape_of = lambda s: (s[1], s[0]) if len(s) == 4 and s[2:] == (1, 1) else None

_STACK = r"(?P<p>(?:encoder|decoder)\.(?:downsamples|upsamples|middle)\.\d+)"
_PART = r"(?P<p>encoder|decoder)"
RULES: tuple[Rule, ...] = (
    Rule(r"(?P<p>conv1|conv2|encoder\.conv1|decoder\.conv1)\.weight", r"\g<p>.kernel", _conv3d),
    Rule(r"(?P<p>conv1|conv2|encoder\.conv1|decoder\.conv1)\.bias", r"\g<p>.bias"),
    Rule(rf"{_STACK}\.residual\.0\.gamma", r"\g<p>.norm1.gamma", _gamma),
    Rule(rf"{_STACK}\.residual\.2\.weight", r"\g<p>.conv1.kernel", _conv3d),
    Rule(rf"{_STACK}\.residual\.2\.bias", r"\g<p>.conv1.bias"),
    Rule(rf"{_STACK}\.residual\.3\.gamma", r"\g<p>.norm2.gamma", _gamma),
    Rule(rf"{_STACK}\.residual\.6\.weight", r"\g<p>.conv2.kernel", _conv3d),
    Rule(rf"{_STACK}\.residual\.6\.bias", r"\g<p>.conv2.bias"),
    Rule(rf"{_STACK}\.shortcut\.weight", r"\g<p>.shortcut.kernel", _conv3d),
    Rule(rf"{_STACK}\.shortcut\.bias", r"\g<p>.shortcut.bias"),
    Rule(rf"{_STACK}\.resample\.1\.weight", r"\g<p>.resample", _conv2d),
    Rule(rf"{_STACK}\.resample\.1\.bias", r"\g<p>.resample_bias"),
    Rule(rf"{_STACK}\.time_conv\.weight", r"\g<p>.time_conv.kernel", _conv3d),
    Rule(rf"{_STACK}\.time_conv\.bias", r"\g<p>.time_conv.bias"),
    Rule(rf"{_STACK}\.norm\.gamma", r"\g<p>.norm.gamma", _gamma),
    Rule(rf"{_STACK}\.(?P<l>to_qkv|proj)\.weight", r"\g<p>.\g<l>.kernel", _pointwise),
    Rule(rf"{_STACK}\.(?P<l>to_qkv|proj)\.bias", r"\g<p>.\g<l>.bias"),
    Rule(rf"{_PART}\.head\.0\.gamma", r"\g<p>.head_norm.gamma", _gamma),
    Rule(rf"{_PART}\.head\.2\.weight", r"\g<p>.head_conv.kernel", _conv3d),
    Rule(rf"{_PART}\.head\.2\.bias", r"\g<p>.head_conv.bias"),
)
_COMPILED = compile_rules(RULES)


def param_shapes(config: VAEConfig) -> dict[Path, tuple[int, ...]]:
  return registry.param_shapes(config)
