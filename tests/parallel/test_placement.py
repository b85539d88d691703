"""Where the memory state and the outputs live on a mesh (shapes only: an abstract mesh needs no devices)."""

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, PartitionSpec as P

from rf_jax.memory import RelaxPolicy, SlowFastPolicy, SlowFastUpstreamPolicy, WindowPolicy
from rf_jax.memory.reservoir import Geometry
from rf_jax.parallel import BATCH, MESH_AXES, MeshConfig, make_mesh, state_specs
from rf_jax.parallel.placement import host_rows, to_host

GEOM = Geometry(num_layers=2, batch=4, frame_tokens=16, num_heads=4, head_dim=32, chunk_frames=3, total_frames=21)
KV = P(None, BATCH, "tensor")  # [L, B, N, R, Q, H]: samples and heads split


def mesh(data=2, fsdp=1, tensor=4):
  return AbstractMesh((data, fsdp, tensor), MESH_AXES)


def test_reservoir_splits_batch_and_heads():
  specs = state_specs(RelaxPolicy(reservoir_frames=12).init, GEOM, mesh())
  assert specs.k == KV and specs.v == KV
  assert specs.frame == P(BATCH) and specs.key_mean == P(BATCH)


def test_every_policy_state_is_covered():
  clean = state_specs(SlowFastPolicy().init, GEOM, mesh())
  assert clean.res.k == KV and clean.promoted == P(BATCH)
  assert clean.last_rep == P(BATCH, "tensor")  # [B, N*H]: heads are contiguous in the flattened width
  upstream = state_specs(SlowFastUpstreamPolicy().init, GEOM, mesh())
  assert upstream.k == KV and upstream.table == P() and upstream.rep == P(None, BATCH, "tensor")
  assert state_specs(WindowPolicy().init, GEOM, mesh()).k == KV


def test_sizes_that_do_not_divide_stay_whole():
  specs = state_specs(RelaxPolicy(reservoir_frames=12).init, GEOM._replace(batch=3, num_heads=6), mesh())
  assert specs.k == P() and specs.frame == P()
  # A mesh of one device splits nothing.
  assert state_specs(RelaxPolicy(reservoir_frames=12).init, GEOM, mesh(1, 1, 1)).k == P()


def test_mesh_must_cover_the_devices():
  with pytest.raises(ValueError, match=r"--mesh data=2,fsdp=1,tensor=4 has 8 devices; there are 1 .*"
                                       r"xla_force_host_platform_device_count"):
    make_mesh(MeshConfig(data=2, tensor=4))


def test_host_rows_of_a_local_array():
  x = np.arange(12.0).reshape(3, 4)
  [(start, rows)] = host_rows(jax.numpy.asarray(x))
  assert start == 0 and np.array_equal(rows, x)
  assert np.array_equal(to_host(jax.numpy.asarray(x)), x)
