"""Measures the bf16 compute mode against float32 on the block-causal forward; prints JSON lines.

    .venv/bin/python scripts/bf16_error.py [REFERENCE_DIR ...]

For each reference folder (fixture format) it loads the PyTorch weights and inputs; with no folder it uses the
`tiny` preset with random weights and inputs. Reported: relative error ||bf16 - f32|| / ||f32|| and max |diff|.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _errors(model_f32, model_bf16, x, t, ctx, **kw):
  with jax.default_matmul_precision("highest"):
    a = np.asarray(model_f32.forward_train(x, t, ctx, **kw), np.float64)
    b = np.asarray(model_bf16.forward_train(x, t, ctx, **kw), np.float64)
  return float(np.linalg.norm(b - a) / np.linalg.norm(a)), float(np.abs(b - a).max()), float(np.abs(a).max())


def main(folders):
  from rf_jax.config import TINY
  from rf_jax.model import CausalWanDiT
  from rf_jax.reference.folder import ReferenceFolder
  from rf_jax.runinfo import git_commit
  base = {"device": str(jax.devices()[0]), "jax": jax.__version__, "commit": git_commit()}
  if not folders:
    m32 = CausalWanDiT(TINY, rngs=nnx.Rngs(0))
    m16 = CausalWanDiT(TINY, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    kx, kc = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (2, 6, 8, 8, 16))
    ctx = jax.random.normal(kc, (2, TINY.text_len, TINY.text_dim))
    t = jnp.array([[1000, 937.5, 833.3, 625, 250, 0]] * 2, jnp.float32)
    rel, mx, scale = _errors(m32, m16, x, t, ctx)
    print(json.dumps({**base, "model": "tiny (random)", "rel_err": rel, "max_abs_diff": mx, "max_abs_f32": scale}))
  for folder in folders:
    ref = ReferenceFolder.open(folder)
    z = np.load(f"{folder}/forward_train.npz")
    m32, m16 = ref.load_model(), ref.load_model(jnp.bfloat16)
    x = jnp.asarray(z["x"]).transpose(0, 2, 3, 4, 1)
    local = ref.config["constructor_args"].get("local_attn_size", -1)
    rel, mx, scale = _errors(m32, m16, x, jnp.asarray(z["t"]), jnp.asarray(z["context"]),
                             chunk_frames=ref.chunk_frames, local_window_frames=local)
    print(json.dumps({**base, "model": folder, "rel_err": rel, "max_abs_diff": mx, "max_abs_f32": scale}))


if __name__ == "__main__":
  main(sys.argv[1:])
