"""Meshes and partitioning: where arrays live, kept apart from the model's math."""

from rf_jax.parallel.mesh import MESH_AXES, MeshConfig, param_spec, param_specs

__all__ = ["MESH_AXES", "MeshConfig", "param_spec", "param_specs"]
