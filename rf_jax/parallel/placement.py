"""Putting arrays on a mesh and getting them back: the model, the memory state, per-sample inputs and outputs.

Everything here is layout; nothing changes a value. Samples split over `data` x `fsdp` (BATCH), heads over
`tensor`, parameters by `PARAM_RULES`. With several processes (`jax.distributed`), a global array is built from the
host values every process holds (`put`), and each process reads back only the rows it owns (`host_rows`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rf_jax.config import BATCH_AXES, MESH_AXES
from rf_jax.parallel.mesh import MeshConfig, param_spec

BATCH = BATCH_AXES  # the mesh axes samples are split over


def make_mesh(config: MeshConfig, devices=None) -> Mesh:
  """A mesh with axes (data, fsdp, tensor) of Auto type over all devices (of every process)."""
  devices = jax.devices() if devices is None else devices
  if config.size != len(devices):
    hint = (" (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N fakes N devices)"
            if devices and devices[0].platform == "cpu" else "")
    raise ValueError(f"--mesh {mesh_flag(config)} has {config.size} devices; there are {len(devices)}{hint}")
  shape = tuple(getattr(config, a) for a in MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def mesh_flag(config: MeshConfig) -> str:
  return ",".join(f"{a}={getattr(config, a)}" for a in MESH_AXES)


def mesh_config(mesh: Mesh) -> MeshConfig:
  return MeshConfig(**{a: mesh.shape.get(a, 1) for a in MESH_AXES})


def put(x, sharding: jax.sharding.Sharding) -> jax.Array:
  """`x` (a host array or an array every process holds the same value of) as a global array with `sharding`."""
  if isinstance(x, jax.Array) and x.sharding == sharding:
    return x
  if sharding.is_fully_addressable:
    return jax.device_put(x, sharding)
  host = np.asarray(x)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def batch_spec(ndim: int, axis: int = 0) -> P:
  """Samples split over BATCH along `axis` of an `ndim`-dim array."""
  return P(*([None] * axis), BATCH, *([None] * (ndim - axis - 1)))


def put_batch(x, mesh: Mesh, axis: int = 0) -> jax.Array:
  return put(x, NamedSharding(mesh, batch_spec(np.ndim(x), axis)))


def model_shardings(model: nnx.Module, mesh: Mesh) -> dict[tuple, NamedSharding]:
  """Flax path -> NamedSharding of every variable: parameters by PARAM_RULES, everything else replicated."""
  cfg = mesh_config(mesh)
  out = {}
  for path, var in nnx.to_flat_state(nnx.state(model)):
    spec = P()
    if isinstance(var, nnx.Param):
      spec = param_spec(".".join(map(str, path)), tuple(var.shape), cfg)
    out[tuple(path)] = NamedSharding(mesh, spec)
  return out


def place_model(model: nnx.Module, mesh: Mesh) -> tuple[nnx.GraphDef, nnx.State]:
  """`nnx.split(model)` with every variable moved onto `mesh` (the model itself is left as it was)."""
  mesh_config(mesh).validate(model.config)
  shardings = model_shardings(model, mesh)
  graphdef, state = nnx.split(model)

  def place(keypath, x):
    path = tuple(k.key for k in keypath if isinstance(k, jax.tree_util.DictKey))
    return put(x, shardings[path])

  return graphdef, jax.tree_util.tree_map_with_path(place, state)


def state_specs(init: Callable[[Any], Any], geometry, mesh: Mesh) -> Any:
  """PartitionSpecs for a memory state `init(geometry)`, found from the shapes alone.

  A dimension that grows with the batch is split over BATCH; one that grows with the head count (N, or N*H) over
  `tensor`. Both are found by `jax.eval_shape` at perturbed geometries, so every policy's state is covered
  without a per-policy table. A size the axis does not divide stays whole.
  """
  shapes = lambda g: jax.eval_shape(lambda: init(g))  # noqa: E731
  base = shapes(geometry)
  more_b = shapes(geometry._replace(batch=geometry.batch + 1))
  more_n = shapes(geometry._replace(num_heads=geometry.num_heads + 1))
  n_batch = mesh.shape["data"] * mesh.shape["fsdp"]
  n_tensor = mesh.shape["tensor"]

  def spec(a, b, n):
    dims: list[Any] = [None] * len(a.shape)
    for i, (s0, sb, sn) in enumerate(zip(a.shape, b.shape, n.shape)):
      if sb != s0 and dims.count(BATCH) == 0 and s0 % n_batch == 0 and n_batch > 1:
        dims[i] = BATCH
      elif sn != s0 and sb == s0 and "tensor" not in dims and s0 % n_tensor == 0 and n_tensor > 1:
        dims[i] = "tensor"
    while dims and dims[-1] is None:
      dims.pop()
    return P(*dims)

  return jax.tree.map(spec, base, more_b, more_n)


def state_shardings(init, geometry, mesh: Mesh) -> Any:
  return jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs(init, geometry, mesh),
                      is_leaf=lambda x: isinstance(x, P))


def host_rows(x) -> list[tuple[int, np.ndarray]]:
  """The rows (leading axis) of `x` this process holds, once each: [(first row, rows), ...].

  A host array, or an array this process holds whole, is one block from row 0; of an array spread over processes
  each process gets only its own rows (a row held on several devices, as over `tensor`, is taken once).
  """
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return [(0, np.asarray(x))]
  blocks: dict[int, np.ndarray] = {}
  for shard in x.addressable_shards:
    if shard.replica_id != 0:
      continue
    rows = shard.index[0] if shard.index else slice(None)
    start = rows.start or 0
    if any(s != slice(None) and s != slice(0, n) for s, n in zip(shard.index[1:], x.shape[1:])):
      raise ValueError(f"host_rows: array of shape {x.shape} is split along more than its leading axis "
                       f"({x.sharding})")
    blocks[start] = np.asarray(shard.data)
  return sorted(blocks.items())


def to_host(x) -> np.ndarray:
  """The whole value of `x` on every process (gathered across processes when it is spread over them)."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def param_shardings(mesh: Mesh) -> Callable[[tuple, tuple[int, ...]], NamedSharding]:
  """Checkpoint restore straight onto the mesh: (Flax path, shape) -> NamedSharding by the partition rules."""
  cfg = mesh_config(mesh)
  return lambda path, shape: NamedSharding(mesh, param_spec(".".join(map(str, path)), shape, cfg))


def batch_parts(mesh: Mesh | None) -> int:
  """How many ways samples split over the mesh (its BATCH axes); 1 without a mesh."""
  return 1 if mesh is None else int(np.prod([mesh.shape[a] for a in BATCH]))


def setup_mesh(mesh: str | None = None, *, coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, distributed: bool = False) -> Mesh | None:
  """jax.distributed (when asked for) and the mesh of a --mesh spec ("data=2,tensor=4"), or None for one device.
  Call before anything touches a device."""
  from rf_jax.parallel.distributed import initialize
  initialize(coordinator, num_processes, process_id, auto=distributed)
  return None if not mesh else make_mesh(MeshConfig.parse(mesh))
