"""The pipeline's three models by kind (the causal DiT, the umT5 text encoder, the Wan VAE): their checkpoint
formats and config types, abstract builds, parameter shapes and paths. What checkpoints, conversion and partitioning
share; it builds models from configs and knows nothing of files.

A parameter is named by its Flax path (a tuple of str/int); `nest`/`flatten` turn {path: array} into the nested dict
NNX states take and back.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from rf_jax.config import ModelConfig
from rf_jax.model import CausalWanDiT
from rf_jax.ops import AttnImpl
from rf_jax.text.umt5 import UMT5Config, UMT5Encoder
from rf_jax.vae.wan_vae import VAEConfig, WanVAE

Path = tuple[str | int, ...]
AnyConfig = ModelConfig | UMT5Config | VAEConfig


@dataclasses.dataclass(frozen=True)
class Kind:
  """One model of the pipeline: its checkpoint format, config type and (abstract) constructor."""
  name: str
  format: str
  config_type: type
  title: str

  def build(self, config, *, dtype=jnp.float32, attn_impl: AttnImpl | str = AttnImpl.AUTO,
            rngs: nnx.Rngs) -> nnx.Module:
    if self.name == "dit":
      return CausalWanDiT(config, dtype=dtype, attn_impl=attn_impl, rngs=rngs)
    if self.name == "umt5":
      return UMT5Encoder(config, dtype=dtype, rngs=rngs)
    return WanVAE(config, dtype=dtype, rngs=rngs)


KINDS = {k.name: k for k in (Kind("dit", "rf_jax.dit/1", ModelConfig, "causal Wan DiT"),
                             Kind("umt5", "rf_jax.umt5/1", UMT5Config, "umT5 text encoder"),
                             Kind("vae", "rf_jax.vae/1", VAEConfig, "Wan VAE"))}


def kind_of(config: AnyConfig) -> Kind:
  for kind in KINDS.values():
    if isinstance(config, kind.config_type):
      return kind
  raise TypeError(f"{type(config).__name__} is not a config of any checkpoint kind ({', '.join(KINDS)})")


def abstract_model(config: AnyConfig, *, dtype=jnp.float32, attn_impl: AttnImpl | str = AttnImpl.AUTO) -> Any:
  """The model of `config`'s kind with shapes but no allocated arrays (`nnx.eval_shape`). `attn_impl`: DiT only."""
  kind = kind_of(config)
  return nnx.eval_shape(lambda: kind.build(config, dtype=dtype, attn_impl=attn_impl, rngs=nnx.Rngs(0)))


def param_shapes(config: AnyConfig) -> dict[Path, tuple[int, ...]]:
  """Flax path -> shape of every parameter, without allocating."""
  return dict(_param_shapes(config))


@functools.lru_cache(maxsize=16)
def _param_shapes(config: AnyConfig) -> tuple[tuple[Path, tuple[int, ...]], ...]:
  state = nnx.state(abstract_model(config), nnx.Param)
  return tuple((tuple(path), tuple(v.shape)) for path, v in nnx.to_flat_state(state))


def model_from_params(config: AnyConfig, params: Mapping, *, dtype=jnp.float32, attn_impl: AttnImpl | str = AttnImpl.AUTO) -> Any:
  """The model of `config`'s kind computing in `dtype` whose parameters are `params` (a nested dict of arrays)."""
  model = abstract_model(config, dtype=dtype, attn_impl=attn_impl)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model


def count_params(config: AnyConfig) -> int:
  return int(sum(np.prod(s, dtype=np.int64) for s in param_shapes(config).values()))


def nest(flat: Mapping[Path, Any]) -> dict:
  tree: dict = {}
  for path, value in flat.items():
    node = tree
    for p in path[:-1]:
      node = node.setdefault(p, {})
    node[path[-1]] = value
  return tree


def flatten(tree: Mapping) -> dict[Path, Any]:
  """The inverse of `nest`: a nested dict of arrays -> {path: leaf}."""
  flat: dict[Path, Any] = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      flat.update({(key, *path): leaf for path, leaf in flatten(value).items()})
    else:
      flat[(key,)] = value
  return flat
