"""Meshes, partitioning and several processes: where arrays live, kept apart from the model's math."""

from rf_jax.parallel.mesh import MESH_AXES, MeshConfig, param_spec, param_specs
from rf_jax.parallel.placement import BATCH, make_mesh, mesh_flag, place_model, state_specs

__all__ = ["BATCH", "MESH_AXES", "MeshConfig", "make_mesh", "mesh_flag", "param_spec", "param_specs",
           "place_model", "state_specs"]
