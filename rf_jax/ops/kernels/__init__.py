"""Pallas attention kernels: `gpu_attention` (Triton) and `tpu_attention` (Mosaic). Reached through
`rf_jax.ops.backend`, the one dispatch point; they use the shared layouts of `ops.memory` and `ops.masks` and never
import the dispatch back."""
