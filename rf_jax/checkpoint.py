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

import json
import os
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rf_jax.io import atomic_directory, write_json_atomic
from rf_jax.ops import AttnImpl
from rf_jax.registry import KINDS, AnyConfig, Path, abstract_model, kind_of, model_from_params, nest, param_shapes

FORMAT = KINDS["dit"].format  # the DiT's


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
  params = os.path.join(os.fspath(path), "params")
  if not os.path.isdir(params):
    raise ValueError(f"{path}: no params/ folder: not an rf_jax checkpoint, or an incomplete one")
  try:
    tree = ocp.StandardCheckpointer().metadata(params).item_metadata.tree
  except Exception as e:  # noqa: BLE001  orbax raises many kinds for a damaged folder
    raise ValueError(f"{params}: the checkpoint's metadata cannot be read: damaged or incomplete "
                     f"({type(e).__name__}: {_first_line(e)})") from None
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
  try:
    return config, checkpointer.restore(os.path.join(path, "params"), abstract)
  except Exception as e:  # noqa: BLE001  a missing or truncated data file surfaces as many kinds of error
    raise ValueError(f"{path}: reading the parameters failed: the checkpoint is damaged or incomplete "
                     f"({type(e).__name__}: {_first_line(e)}); `rf-jax inspect --verify {path}` names the arrays"
                     ) from None


def _first_line(e: BaseException) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:300] if text else type(e).__name__


def verify_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict:
  """Reads every stored array of a checkpoint (on the host: it needs the checkpoint's size in memory) and checks
  its shape against the config, its dtype against the metadata, and that its values are finite. Returns
  {"arrays", "parameters"}; raises ValueError naming the first array that cannot be read or is wrong."""
  import orbax.checkpoint as ocp
  path = os.path.abspath(os.fspath(path))
  config = load_config(path, kind)
  shapes = param_shapes(config)
  dtypes = stored_dtypes(path)
  missing, extra = sorted(set(shapes) - set(dtypes)), sorted(set(dtypes) - set(shapes))
  if missing or extra:
    raise ValueError(f"{path}: stored arrays do not match its config: missing {[format_key(p) for p in missing[:5]]}, "
                     f"extra {[format_key(p) for p in extra[:5]]}")
  device = jax.sharding.SingleDeviceSharding(jax.devices("cpu")[0])
  try:  # the whole tree at once (orbax reads each array's own files; a missing or truncated one fails here)
    restored = ocp.StandardCheckpointer().restore(os.path.join(path, "params"), nest(
        {q: jax.ShapeDtypeStruct(s, dtypes[q], sharding=device) for q, s in shapes.items()}))
  except Exception as e:  # noqa: BLE001
    raise ValueError(f"{path}: reading the parameters failed: damaged or incomplete ({type(e).__name__}: "
                     f"{_first_line(e)})") from None
  flat = {tuple(int(k.key) if str(k.key).isdigit() else k.key for k in kp): leaf
          for kp, leaf in jax.tree_util.tree_flatten_with_path(restored)[0]}
  total = 0
  for p, shape in sorted(shapes.items(), key=lambda kv: format_key(kv[0])):
    a = np.asarray(flat[p])
    if a.shape != tuple(shape) or a.dtype != dtypes[p]:
      raise ValueError(f"{path}: array {format_key(p)} is {a.dtype}{list(a.shape)}; the checkpoint says "
                       f"{dtypes[p]}{list(shape)}")
    if not np.isfinite(a.astype(np.float32)).all():
      raise ValueError(f"{path}: array {format_key(p)} holds NaN or infinite values")
    total += a.size
  return {"arrays": len(shapes), "parameters": int(total)}


def format_key(p: Path) -> str:
  return ".".join(map(str, p))


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


def load_model(path: str | os.PathLike, *, dtype=jnp.float32, shardings: ShardingSpec = None, attn_impl: AttnImpl | str = AttnImpl.AUTO,
               kind: str | None = "dit"):
  """Restores a checkpoint into its model computing in `dtype` (shardings as in `load_params`): a `CausalWanDiT`
  with attention backend `attn_impl`, or with `kind="umt5"` / `"vae"` the text encoder / VAE."""
  config, restored = _restore_tree(path, shardings, kind)
  return model_from_params(config, restored, dtype=dtype, attn_impl=attn_impl)
