"""rf_jax checkpoints: an orbax PyTree of parameters plus the model config, written atomically.

One format for each of the pipeline's three models (the kind is named in config.json):
    rf_jax.dit/1    the causal Wan DiT (`rf_jax.config.ModelConfig`)
    rf_jax.umt5/1   the umT5 text encoder (`rf_jax.text.umt5.UMT5Config`)
    rf_jax.vae/1    the Wan VAE (`rf_jax.vae.wan_vae.VAEConfig`)

Layout of a checkpoint folder:
    params/       orbax StandardCheckpointer tree (nested dict mirroring the NNX parameter paths)
    config.json   {"format": "rf_jax.<kind>/1", "model": the config's fields}
    meta.json     where the weights came from (source file, entry, stripped prefix, dtype policy, count)

The folder is assembled under a temporary name beside the destination and renamed into place at the end, so an
interrupted write never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rf_jax.config import ModelConfig
from rf_jax.text.umt5 import UMT5Config
from rf_jax.vae.wan_vae import VAEConfig

Path = tuple[str | int, ...]
AnyConfig = ModelConfig | UMT5Config | VAEConfig


@dataclasses.dataclass(frozen=True)
class Kind:
  """One model of the pipeline: its checkpoint format, config type and (abstract) constructor."""
  name: str
  format: str
  config_type: type
  title: str

  def build(self, config, *, dtype=jnp.float32, attn_impl="auto", rngs: nnx.Rngs) -> nnx.Module:
    if self.name == "dit":
      from rf_jax.model import CausalWanDiT
      return CausalWanDiT(config, dtype=dtype, attn_impl=attn_impl, rngs=rngs)
    if self.name == "umt5":
      from rf_jax.text.umt5 import UMT5Encoder
      return UMT5Encoder(config, dtype=dtype, rngs=rngs)
    from rf_jax.vae.wan_vae import WanVAE
    return WanVAE(config, dtype=dtype, rngs=rngs)


KINDS = {k.name: k for k in (Kind("dit", "rf_jax.dit/1", ModelConfig, "causal Wan DiT"),
                             Kind("umt5", "rf_jax.umt5/1", UMT5Config, "umT5 text encoder"),
                             Kind("vae", "rf_jax.vae/1", VAEConfig, "Wan VAE"))}
FORMAT = KINDS["dit"].format  # the DiT's, kept for callers of the first release


def kind_of(config: AnyConfig) -> Kind:
  for kind in KINDS.values():
    if isinstance(config, kind.config_type):
      return kind
  raise TypeError(f"{type(config).__name__} is not a config of any checkpoint kind ({', '.join(KINDS)})")


def abstract_model(config: AnyConfig, *, dtype=jnp.float32, attn_impl="auto") -> Any:
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


def model_from_params(config: AnyConfig, params: Mapping, *, dtype=jnp.float32, attn_impl="auto") -> Any:
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


@contextlib.contextmanager
def atomic_directory(dest: str | os.PathLike, *, force: bool = False) -> Iterator[str]:
  """Yields a fresh temporary folder beside `dest`; on success it replaces `dest` (only with `force`)."""
  dest = os.path.abspath(os.fspath(dest))
  if os.path.exists(dest) and not force:
    raise FileExistsError(f"{dest} already exists; pass --force to replace it")
  parent = os.path.dirname(dest)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.partial-", dir=parent)
  try:
    yield tmp
    if os.path.exists(dest):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old-", dir=parent)
      os.rename(dest, os.path.join(old, "x"))
      os.rename(tmp, dest)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, dest)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def write_json_atomic(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def save_checkpoint(dest: str | os.PathLike, config: AnyConfig, params: Mapping[Path, Any] | nnx.State, *,
                    meta: Mapping[str, Any] | None = None, force: bool = False) -> str:
  """Writes params (flat {path: array} or an nnx.State) and the config to `dest`, atomically."""
  import orbax.checkpoint as ocp
  if isinstance(params, nnx.State):
    params = {tuple(p): v for p, v in nnx.to_flat_state(params)}
  params = {p: (v.get_value() if isinstance(v, nnx.Variable) else v) for p, v in params.items()}
  expected = param_shapes(config)
  if set(params) != set(expected):
    raise ValueError(f"params do not match the config: missing {sorted(set(expected) - set(params))[:5]}, "
                     f"extra {sorted(set(params) - set(expected))[:5]}")
  with atomic_directory(dest, force=force) as tmp:
    # A synchronous save whose numpy handler does not deep-copy host arrays: memory-mapped parameters staged by
    # the converter stream to disk instead of being copied into RAM (orbax's default copies the whole tree).
    registry = ocp.type_handlers.create_type_handler_registry(
        (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False)),
        (jax.Array, ocp.type_handlers.ArrayHandler()))
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry, save_concurrent_gb=1)
    with ocp.Checkpointer(handler) as checkpointer:
      checkpointer.save(os.path.join(tmp, "params"), args=ocp.args.PyTreeSave(nest(params)))
    write_json_atomic(os.path.join(tmp, "config.json"), {"format": kind_of(config).format,
                                                              "model": config.to_dict()})
    write_json_atomic(os.path.join(tmp, "meta.json"), dict(meta or {}))
  return os.path.abspath(os.fspath(dest))


def load_config(path: str | os.PathLike, kind: str | None = "dit") -> AnyConfig:
  """The config of the checkpoint at `path`; `kind` ("dit", "umt5", "vae") is the one the caller needs (None:
  any), and a checkpoint of another kind is refused naming both."""
  cfg_path = os.path.join(os.fspath(path), "config.json")
  try:
    with open(cfg_path) as f:
      d = json.load(f)
  except FileNotFoundError:
    hint = (" (it is a converted Wan folder: its models are in dit/, umt5/ and vae/)"
            if os.path.exists(os.path.join(os.fspath(path), "pipeline.json")) else "")
    raise ValueError(f"{path}: not an rf_jax checkpoint (no config.json){hint}; convert weights with "
                     "`rf-jax convert` first") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
  found = next((k for k in KINDS.values() if k.format == d.get("format")), None)
  if found is None:
    raise ValueError(f"{cfg_path}: format {d.get('format')!r} is none of "
                     f"{sorted(k.format for k in KINDS.values())}")
  if kind is not None and found.name != kind:
    raise ValueError(f"{path} is a {found.title} checkpoint ({found.format}); a {KINDS[kind].title} "
                     f"({KINDS[kind].format}) is needed here")
  return found.config_type.from_dict(d["model"], source=cfg_path)


def load_meta(path: str | os.PathLike) -> dict:
  try:
    with open(os.path.join(os.fspath(path), "meta.json")) as f:
      return json.load(f)
  except FileNotFoundError:
    return {}


def stored_dtypes(path: str | os.PathLike) -> dict[Path, np.dtype]:
  """Flax path -> dtype of each stored parameter, from orbax's metadata (no data read)."""
  import orbax.checkpoint as ocp
  checkpointer = ocp.StandardCheckpointer()
  tree = checkpointer.metadata(os.path.join(os.fspath(path), "params")).item_metadata.tree
  out = {}
  for keypath, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[tuple(int(k.key) if str(k.key).isdigit() else k.key for k in keypath)] = np.dtype(leaf.dtype)
  return out


ShardingSpec = jax.sharding.Sharding | Callable[[Path, tuple[int, ...]], jax.sharding.Sharding] | None


def _restore_tree(path: str | os.PathLike, shardings: ShardingSpec, kind: str | None) -> tuple[AnyConfig, dict]:
  """The checkpoint's config and its parameters as a nested dict, each read straight into its sharding."""
  import orbax.checkpoint as ocp
  path = os.path.abspath(os.fspath(path))
  config = load_config(path, kind)
  shapes = param_shapes(config)
  dtypes = stored_dtypes(path)
  if set(dtypes) != set(shapes):
    raise ValueError(f"{path}: stored parameters do not match its config: missing "
                     f"{sorted(set(shapes) - set(dtypes))[:5]}, extra {sorted(set(dtypes) - set(shapes))[:5]}")

  def sharding_for(p, shape):
    if shardings is None:
      return jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    if isinstance(shardings, jax.sharding.Sharding):
      return shardings
    return shardings(p, shape)

  abstract = nest({p: jax.ShapeDtypeStruct(s, dtypes[p], sharding=sharding_for(p, s)) for p, s in shapes.items()})
  checkpointer = ocp.StandardCheckpointer()
  return config, checkpointer.restore(os.path.join(path, "params"), abstract)


def load_params(path: str | os.PathLike, *, shardings: ShardingSpec = None,
                kind: str | None = "dit") -> tuple[AnyConfig, nnx.State]:
  """Restores a checkpoint's parameters as an `nnx.State`.

  shardings: None (arrays on the default device), one Sharding for every parameter, or a function
  (path, shape) -> Sharding; orbax then reads each parameter straight into its shards.
  """
  config, restored = _restore_tree(path, shardings, kind)
  state = nnx.state(abstract_model(config), nnx.Param)
  nnx.replace_by_pure_dict(state, restored)
  return config, state


def load_model(path: str | os.PathLike, *, dtype=jnp.float32, shardings: ShardingSpec = None, attn_impl="auto",
               kind: str | None = "dit"):
  """Restores a checkpoint into its model computing in `dtype` (shardings as in `load_params`): a `CausalWanDiT`
  with attention backend `attn_impl`, or with `kind="umt5"` / `"vae"` the text encoder / VAE."""
  config, restored = _restore_tree(path, shardings, kind)
  return model_from_params(config, restored, dtype=dtype, attn_impl=attn_impl)
