"""umT5 against the real PyTorch encoder's fixture (every layer), an independent bucket formula, and its own
invariants (padding does not change the valid rows); the converter's strictness."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import fixture_dir
from rf_jax.convert import ConversionError
from rf_jax.convert.readers import SourceTensor, open_source
from rf_jax.convert import convert_umt5_tensors, encoder_from_params
from rf_jax.convert.umt5 import param_shapes
from rf_jax.reference import check_reference
from rf_jax.text import UMT5_TINY, UMT5Config, UMT5Encoder, relative_buckets, wan_embeddings


def test_fixture_parity_every_layer():
  results, notes = check_reference(fixture_dir("T5"), tolerance=1e-5, emit=lambda line: None)
  names = {r.name for r in results}
  assert {"t5/rel_bucket", "t5/emb", "t5/pos_bias_1", "t5/attn_out_1", "t5/hidden_1", "t5/out", "t5/out_wan",
          "t5/out_long"} <= names
  assert all(r.passed for r in results), [r.line() for r in results if not r.passed]


def bucket_float64(rel, num_buckets=32, max_dist=128):
  """T5's bidirectional bucket written out in float64 (one number at a time)."""
  half = num_buckets // 2
  exact = half // 2
  out = half if rel > 0 else 0
  d = abs(rel)
  if d < exact:
    return out + d
  return out + min(half - 1, exact + int(math.log(d / exact) / math.log(max_dist / exact) * (half - exact)))


def test_buckets_against_float64():
  table = relative_buckets(512, 512)
  rel = np.arange(512)[None, :] - np.arange(512)[:, None]
  expected = np.vectorize(bucket_float64)(rel)
  assert np.array_equal(table, expected)
  assert table[0, 16] == 16 + 10 and table[16, 0] == 10 and table[0, 511] == 31  # boundaries, clamp


def test_padding_does_not_change_the_valid_rows():
  model = UMT5Encoder(UMT5_TINY, rngs=nnx.Rngs(0))
  ids = np.array([[5, 17, 99, 1]])
  padded = np.concatenate([ids, np.zeros((1, 6), int)], axis=1)
  a = model(jnp.asarray(ids), jnp.ones_like(jnp.asarray(ids)))
  b = model(jnp.asarray(padded), jnp.asarray(padded != 0))
  np.testing.assert_allclose(np.asarray(b)[:, :4], np.asarray(a), rtol=1e-5, atol=1e-5)  # float reassociation only
  w = wan_embeddings(b, jnp.asarray(padded != 0))
  assert np.all(np.asarray(w)[:, 4:] == 0) and np.array_equal(np.asarray(w)[:, :4], np.asarray(b)[:, :4])


def test_bfloat16_stays_close():
  tensors, _ = open_source(os.path.join(fixture_dir("T5"), "model.safetensors"))
  with open(os.path.join(fixture_dir("T5"), "config.json")) as f:
    cfg = UMT5Config.from_constructor_args(json.load(f)["constructor_args"])
  params = convert_umt5_tensors(tensors, cfg)
  z = np.load(os.path.join(fixture_dir("T5"), "t5.npz"))
  out = encoder_from_params(cfg, params, dtype=jnp.bfloat16)(jnp.asarray(z["ids"]), jnp.asarray(z["mask"]))
  assert out.dtype == jnp.bfloat16
  err = np.linalg.norm(np.asarray(out, np.float64) - z["out"]) / np.linalg.norm(z["out"])
  assert err < 2e-2, err


def test_real_keys_fill_the_xxl_preset():
  """The 242 keys and shapes of the real umT5-XXL file (from the fixture's key list) plan onto the preset."""
  tensors = []
  with open(os.path.join(fixture_dir("T5"), "real_keys.tsv")) as f:
    for line in f:
      parts = line.rstrip("\n").split("\t")
      if parts[0] in ("key", "") or len(parts) < 2:
        continue
      tensors.append(SourceTensor(parts[0], tuple(json.loads(parts[1])), np.dtype(np.float32), "real", lambda: None))
  assert len(tensors) == 242
  from rf_jax.convert.umt5 import _COMPILED
  from rf_jax.convert.wan_dit import plan
  shapes = param_shapes(UMT5Config())
  assert len(plan(tensors, shapes, num_layers=24, rules=_COMPILED)) == 242
  assert sum(math.prod(s) for s in shapes.values()) == 5_680_910_336


def test_converter_names_every_problem():
  tensors, _ = open_source(os.path.join(fixture_dir("T5"), "model.safetensors"))
  kept = [t for t in tensors if t.key != "blocks.1.ffn.fc1.weight"]
  extra = SourceTensor("blocks.0.attn.bias", (64,), np.dtype(np.float32), "x", lambda: None)
  with pytest.raises(ConversionError) as e:
    convert_umt5_tensors([*kept, extra], UMT5Config(vocab=256, dim=64, dim_attn=64, dim_ffn=128, num_heads=4,
                                                    num_layers=2))
  msg = str(e.value)
  assert "blocks.0.attn.bias" in msg and "blocks.ffn.fc1.kernel (layers 1)" in msg
