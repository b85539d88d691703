"""Wan's umT5 encoder state dict (`models_t5_umt5-xxl-enc-bf16.pth`, or a fixture's safetensors) -> `UMT5Encoder`
parameters, by the same strict rule-table planner as the DiT."""

from __future__ import annotations

import functools

import numpy as np
from flax import nnx

from rf_jax.convert.modules import fill, module_from_params, param_shapes_of
from rf_jax.convert.readers import SourceTensor
from rf_jax.convert.wan_dit import Rule, _linear, compile_rules, plan
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


def abstract_encoder(config: UMT5Config, dtype=None):
  import jax.numpy as jnp
  from rf_jax.text.umt5 import UMT5Encoder
  return nnx.eval_shape(lambda: UMT5Encoder(config, dtype=dtype or jnp.float32, rngs=nnx.Rngs(0)))


@functools.lru_cache(maxsize=8)
def _shapes(config: UMT5Config) -> tuple:
  return param_shapes_of(abstract_encoder(config))


def param_shapes(config: UMT5Config) -> dict[Path, tuple[int, ...]]:
  return dict(_shapes(config))


def convert_umt5_tensors(tensors: list[SourceTensor], config: UMT5Config) -> dict[Path, np.ndarray]:
  """Every encoder parameter (float32) from `tensors`, strictly: unused keys, unfilled parameters and shape
  mismatches are all reported at once, before any data is read."""
  shapes = param_shapes(config)
  assignments = plan(tensors, shapes, num_layers=config.num_layers, rules=_COMPILED)
  return fill(assignments, shapes)


def encoder_from_params(config: UMT5Config, params, *, dtype=None):
  """A `UMT5Encoder` whose parameters are `params` ({flax path: array})."""
  return module_from_params(lambda: abstract_encoder(config, dtype), params)
