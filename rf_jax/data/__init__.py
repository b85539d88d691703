"""Datasets the code makes itself."""

from rf_jax.data.shapes import ShapesConfig, shapes_batch, shapes_clip

__all__ = ["ShapesConfig", "shapes_batch", "shapes_clip"]
