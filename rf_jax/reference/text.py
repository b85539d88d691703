"""The umT5 text encoder's parity check: `rf-jax check-reference` for a umT5 folder (`config.json` with T5Encoder `constructor_args`, `model.safetensors`,
`t5.npz`): bucket table, embedding, every layer's bias, attention input/output and residual stream, the encoder
output, Wan's zeroed embeddings, and a 160-token prompt that reaches the log buckets and the distance clamp."""

from __future__ import annotations

from typing import Iterator

import jax.numpy as jnp
import numpy as np

from rf_jax.convert import convert_umt5_tensors, encoder_from_params
from rf_jax.reference.compare import Comparison, mismatch, relative_error
from rf_jax.reference.folder import ReferenceFolder
from rf_jax.text.umt5 import UMT5Config, _bucket, wan_embeddings


def load_reference_encoder(ref: ReferenceFolder):
  d = ref.config
  tensors = ref.tensors()
  config = UMT5Config.from_constructor_args(d["constructor_args"], source=ref.config_path)
  if "eps" in d or "max_dist" in d:
    import dataclasses
    config = dataclasses.replace(config, eps=float(d.get("eps", config.eps)),
                                 max_dist=int(d.get("max_dist", config.max_dist)))
  return encoder_from_params(config, {p: jnp.asarray(v) for p, v in convert_umt5_tensors(tensors, config).items()})


def check_t5(ref: ReferenceFolder, z: dict, tol: float) -> Iterator[Comparison]:
  model = load_reference_encoder(ref)
  cfg = model.config
  if "rel_bucket" in z:
    got = _bucket(np.asarray(z["rel_pos"]), cfg.num_buckets, cfg.max_dist)
    yield Comparison("t5/rel_bucket", mismatch(got, z["rel_bucket"]), 0.0, "mismatch")
  ids, mask = jnp.asarray(z["ids"]), jnp.asarray(z["mask"])
  out, acts = model.forward_with_activations(ids, mask)
  if "emb" in z:
    yield Comparison("t5/emb", relative_error(np.asarray(acts["emb"]), z["emb"]), tol)
  bias, normed, attn, hidden = (np.asarray(a) for a in acts["per_layer"])  # each [layers, ...]
  for i in range(cfg.num_layers):
    for name, value in ((f"pos_bias_{i}", bias[i]), (f"norm1_{i}", normed[i]), (f"attn_out_{i}", attn[i]),
                        (f"hidden_{i}", hidden[i])):
      if name in z:
        yield Comparison(f"t5/{name}", relative_error(value, z[name]), tol)
  yield Comparison("t5/out", relative_error(out, z["out"]), tol)
  if "out_wan" in z:
    yield Comparison("t5/out_wan", relative_error(wan_embeddings(out, mask), z["out_wan"]), tol)
  if "ids_long" in z:
    long = model(jnp.asarray(z["ids_long"]), jnp.asarray(z["mask_long"]))
    yield Comparison("t5/out_long", relative_error(long, z["out_long"]), tol)
