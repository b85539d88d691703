"""Wan's umT5 encoder state dict (`models_t5_umt5-xxl-enc-bf16.pth`, or a fixture's safetensors) -> `UMT5Encoder`
parameters, by the same strict rule-table planner as the DiT."""

from __future__ import annotations

import numpy as np

from rf_jax.convert.readers import SourceTensor
from rf_jax.convert.wan_dit import Rule, _linear, compile_rules
from rf_jax.text.umt5 import UMT5Config

Path = tuple[str | int, ...]

RULES: tuple[Rule, ...] = (
    Rule(r"token_embedding\.weight", "token_embedding.embedding"),
    Rule(r"blocks\.(?P<layer>\d+)\.(?P<n>norm1|norm2)\.weight", r"blocks.\g<n>.weight"),
    Rule(r"blocks\.(?P<layer>\d+)\.attn\.(?P<p>[qkvo])\.weight", r"blocks.attn.\g<p>.kernel", _linear),
    Rule(r"blocks\.(?P<layer>\d+)\.ffn\.gate\.0\.weight", "blocks.ffn.gate.kernel", _linear),
    Rule(r"blocks\.(?P<layer>\d+)\.ffn\.(?P<p>fc1|fc2)\.weight", r"blocks.ffn.\g<p>.kernel", _linear),
    Rule(r"blocks\.(?P<layer>\d+)\.pos_embedding\.embedding\.weight", "blocks.pos_embedding"),
    Rule(r"norm\.weight", "norm.weight"),
)
_COMPILED = compile_rules(RULES)


def param_shapes(config: UMT5Config) -> dict[Path, tuple[int, ...]]:
  from rf_jax.registry import param_shapes as shapes
  return shapes(config)


def convert_umt5_tensors(tensors: list[SourceTensor], config: UMT5Config) -> dict[Path, np.ndarray]:
  """Every encoder parameter (float32) from `tensors`, strictly: unused keys, unfilled parameters and shape
  mismatches are all reported at once, before any data is read."""
  from rf_jax.convert import convert_tensors
  return convert_tensors(tensors, config, dtype="float32")


def encoder_from_params(config: UMT5Config, params, *, dtype=None):
  """The model whose parameters are `params` ({flax path: array}), computing in `dtype` (default float32)."""
  import jax.numpy as jnp
  from rf_jax.registry import model_from_params, nest
  return model_from_params(config, nest(params), dtype=dtype or jnp.float32)
