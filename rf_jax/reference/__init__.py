"""The parity harness: hold the port to outputs of the real PyTorch code (`rf-jax check-reference DIR`).

  check.py    the dispatcher: which checks a folder's files call for, and what was not compared
  compare.py  the metrics (relative error, max |difference|, exact mismatch) and the verdict
  folder.py   the one reader of a reference folder (config.json, model.safetensors, .npz outputs)
  dit.py      the DiT: RoPE and a training-style forward with its activations
  rollout.py  an autoregressive rollout with its memory policy, chunk by chunk
  text.py     the umT5 text encoder
  vae.py      the Wan VAE
"""

from rf_jax.reference.check import check_reference, summarize
from rf_jax.reference.compare import DEFAULT_ABS_TOLERANCE, DEFAULT_TOLERANCE, Comparison
from rf_jax.reference.folder import ReferenceFolder

__all__ = ["Comparison", "DEFAULT_ABS_TOLERANCE", "DEFAULT_TOLERANCE", "ReferenceFolder", "check_reference", "summarize"]
