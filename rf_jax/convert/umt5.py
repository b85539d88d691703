"""Wan's umT5 encoder state dict (`models_t5_umt5-xxl-enc-bf16.pth`, or a fixture's safetensors) -> `UMT5Encoder`
parameters, by the same strict rule-table planner as the DiT."""

from __future__ import annotations

import numpy as np

from rf_jax.convert.readers import SourceTensor
from rf_jax import registry
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
  return registry.param_shapes(config)
