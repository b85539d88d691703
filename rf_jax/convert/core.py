"""The conversion itself: a model's PyTorch tensors -> its parameters by Flax path, by the rule table of the config's
kind (`wan_dit`, `umt5`, `wan_vae`), and one model -> one rf_jax checkpoint."""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Mapping

import ml_dtypes
import numpy as np

from rf_jax.convert import umt5, wan_dit, wan_vae
from rf_jax.convert.readers import SourceTensor, open_source
from rf_jax.convert.wan_dit import ConversionError, format_path, plan
from rf_jax.io import clean_leftovers
from rf_jax.registry import count_params, kind_of, model_from_params, nest, param_shapes

DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
          "float16": np.dtype(np.float16)}

Path = tuple[str | int, ...]


def param_dtype_for(path: Path, shape: tuple[int, ...], dtype: str | None, source_dtype: np.dtype) -> np.dtype:
  """The stored dtype of one parameter.

  dtype None keeps the source's floating dtype. Otherwise matrices (kernels, and umT5's token embedding table)
  take `dtype`, while biases, norm weights and the modulation tables stay float32: they are small and the float32
  arithmetic reads them.
  """
  if dtype is None:
    return np.dtype(source_dtype)
  if dtype not in DTYPES:
    raise ValueError(f"unknown --dtype {dtype!r}; choose one of {sorted(DTYPES)}")
  return DTYPES[dtype] if path[-1] in ("kernel", "embedding") else np.dtype(np.float32)


def rules_for(config) -> tuple[tuple, int]:
  """(compiled rule table, number of stacked layers) of the model `config` describes."""
  kind = kind_of(config).name
  if kind == "dit":
    return wan_dit._COMPILED, config.num_layers
  if kind == "umt5":
    return umt5._COMPILED, config.num_layers
  return wan_vae._COMPILED, 0


def convert_tensors(tensors: list[SourceTensor], config, *, dtype: str | None = None,
                    allocate: Callable[[Path, tuple[int, ...], np.dtype], np.ndarray] | None = None,
                    progress: bool = False, check_finite: bool = False) -> dict[Path, np.ndarray]:
  """Fills every parameter of `config`'s model from `tensors`, strictly. Reads one tensor at a time, in the given (shard) order.

  allocate(path, shape, dtype) makes the destination arrays (default: in memory; `convert_checkpoint` passes
  memory-mapped files so a 14B model never has to fit in RAM). Every source tensor's dtype is checked before any
  data is read (floating, and one dtype for all the layers of a stacked parameter unless `dtype` casts them);
  `check_finite` also refuses a tensor holding NaN or infinity, naming it.
  """
  shapes = param_shapes(config)
  rules, num_layers = rules_for(config)
  assignments = plan(tensors, shapes, num_layers=num_layers, rules=rules)
  allocate = allocate or (lambda p, s, d: np.empty(s, d))
  dtypes: dict[Path, np.dtype] = {}
  first: dict[Path, SourceTensor] = {}
  for a in assignments:
    d = np.dtype(a.source.dtype)
    if not np.issubdtype(d, np.floating) and d != np.dtype(ml_dtypes.bfloat16):
      raise ConversionError(f"{a.source.key} ({format_path(a.target)}): source dtype {d} is not a floating type")
    seen = first.setdefault(a.target, a.source)
    if dtype is None and np.dtype(seen.dtype) != d:
      raise ConversionError(f"{a.source.key} is {d} but {seen.key} ({format_path(a.target)} of another layer) is "
                            f"{np.dtype(seen.dtype)}; pass --dtype to store them in one dtype")
    dtypes.setdefault(a.target, param_dtype_for(a.target, shapes[a.target], dtype, a.source.dtype))
  out = {p: allocate(p, shapes[p], dtypes[p]) for p in shapes}
  iterator: Any = assignments
  if progress:
    from tqdm import tqdm
    iterator = tqdm(assignments, desc="converting", unit="tensor")
  for a in iterator:
    raw = a.source.load()
    if check_finite and not np.isfinite(np.asarray(raw, np.float32)).all():
      raise ConversionError(f"{a.source.key} ({a.source.shard}): holds NaN or infinite values")
    value = a.transform(raw).astype(dtypes[a.target])
    if a.layer is None:
      out[a.target][...] = value
    else:
      out[a.target][a.layer] = value
  return out


STAGING_PREFIX = ".rf_jax-staging-"  # + PID: the memory-mapped parameters of a conversion in progress


def convert_checkpoint(src: str | os.PathLike, out: str | os.PathLike, *, config,
                       weights: str | None = None, dtype: str | None = None, force: bool = False,
                       progress: bool = True, extra_meta: Mapping[str, Any] | None = None,
                       check_finite: bool = False) -> dict:
  """Converts PyTorch weights (safetensors, sharded safetensors, or .pt/.pth) of the model `config` describes (DiT,
  umT5 or VAE) into an rf_jax orbax checkpoint.

  Parameters are staged in memory-mapped files beside `out`, so memory stays bounded by one source tensor even
  for the 14B model; the checkpoint is renamed into place only when complete. Returns the written meta.
  """
  from rf_jax.checkpoint import save_checkpoint
  out = os.path.abspath(os.fspath(out))
  if os.path.exists(out) and not force:
    raise FileExistsError(f"{out} already exists; pass --force to replace it")
  tensors, info = open_source(src, weights=weights)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  clean_leftovers(os.path.dirname(out), STAGING_PREFIX, what="conversion staging")
  with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=os.path.dirname(out)) as staging:

    def allocate(path, shape, dt):
      name = os.path.join(staging, format_path(path) + ".npy")
      return np.lib.format.open_memmap(name, mode="w+", dtype=dt, shape=shape)

    params = convert_tensors(tensors, config, dtype=dtype, allocate=allocate, progress=progress,
                             check_finite=check_finite)
    for arr in params.values():
      arr.flush()
    meta = {**info, "dtype": dtype or "source", "num_params": count_params(config),
            "num_source_tensors": len(tensors), **(extra_meta or {})}
    save_checkpoint(out, config, params, meta=meta, force=force)
  return meta


def convert_umt5_tensors(tensors: list[SourceTensor], config) -> dict[Path, np.ndarray]:
  """Every umT5 encoder parameter (float32) from `tensors`, strictly: unused keys, unfilled parameters and shape
  mismatches are all reported at once, before any data is read."""
  return convert_tensors(tensors, config, dtype="float32")


def convert_vae_tensors(tensors: list[SourceTensor], config) -> dict[Path, np.ndarray]:
  """Every VAE parameter (float32) from `tensors`, strictly."""
  return convert_tensors(tensors, config, dtype="float32")


def model_of(config, params: Mapping[Path, Any], *, dtype=None):
  """The model of `config`'s kind whose parameters are `params` ({flax path: array}), computing in `dtype`
  (default float32)."""
  import jax.numpy as jnp
  return model_from_params(config, nest(params), dtype=dtype or jnp.float32)


encoder_from_params = vae_from_params = model_of
