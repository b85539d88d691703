"""Pallas attention kernels: `gpu_attention` (Triton) and `tpu_attention` (Mosaic). Reach them through
`rf_jax.ops.attention`, the one dispatch point."""
