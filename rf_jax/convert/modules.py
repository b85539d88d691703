"""Helpers the umT5 and VAE converters share: parameter shapes of an abstract NNX model, filling them from a plan,
and a model holding given parameters."""

from __future__ import annotations

from typing import Callable

import numpy as np
from flax import nnx

Path = tuple[str | int, ...]


def param_shapes_of(abstract: nnx.Module) -> tuple[tuple[Path, tuple[int, ...]], ...]:
  """(Flax path, shape) of every parameter of an `nnx.eval_shape`d model."""
  return tuple((tuple(p), tuple(v.shape)) for p, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param)))


def fill(assignments, shapes: dict[Path, tuple[int, ...]]) -> dict[Path, np.ndarray]:
  """float32 arrays for `shapes`, filled from `plan(...)`'s assignments (stacked rows where a layer is given)."""
  out = {p: np.empty(s, np.float32) for p, s in shapes.items()}
  for a in assignments:
    value = a.transform(a.source.load()).astype(np.float32)
    if a.layer is None:
      out[a.target][...] = value
    else:
      out[a.target][a.layer] = value
  return out


def module_from_params(make_abstract: Callable[[], nnx.Module], params) -> nnx.Module:
  """The abstract model with `params` ({flax path: array}) put in."""
  from rf_jax.checkpoint import nest
  model = make_abstract()
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, nest(params))
  nnx.update(model, state)
  return model
