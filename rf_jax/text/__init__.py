"""Text conditioning: the umT5 encoder Wan2.1 uses."""

from rf_jax.text.umt5 import PRESETS, UMT5_TINY, UMT5_XXL, UMT5Config, UMT5Encoder, relative_buckets, wan_embeddings

__all__ = ["PRESETS", "UMT5Config", "UMT5Encoder", "UMT5_TINY", "UMT5_XXL", "relative_buckets", "wan_embeddings"]
