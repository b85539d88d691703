"""The Wan VAE against the real PyTorch VAE's fixture (encode, decode, stage activations, chunked decode), the
streaming decoder against the whole decode for any split, and the converter on the real key set."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import fixture_dir
from rf_jax.convert import ConversionError
from rf_jax.convert.readers import SourceTensor, open_source
from rf_jax.convert.wan_dit import plan
from rf_jax.convert import convert_vae_tensors
from rf_jax.convert.wan_vae import _COMPILED, param_shapes
from rf_jax.reference import check_reference
from rf_jax.vae import VAE_TINY, WAN21_VAE, WanVAE


def test_fixture_parity():
  results, notes = check_reference(fixture_dir("VAE"), tolerance=1e-5, emit=lambda line: None)
  names = {r.name for r in results}
  assert {"vae/mu", "vae/act_enc_down5", "vae/dec3_video", "vae/act_dec_up7", "vae/dec6_video",
          "vae/dec6_streamed_in_2_chunks", "vae/dec3_video_wrapper"} <= names
  assert all(r.passed for r in results), [r.line() for r in results if not r.passed]


def test_streaming_decode_equals_the_whole_decode_with_one_compile_per_chunk_shape():
  vae = WanVAE(VAE_TINY, rngs=nnx.Rngs(3))
  graphdef, state = nnx.split(vae)
  traces = []

  def stream_step(st, z, h, first):
    traces.append((z.shape[1], first))
    return nnx.merge(graphdef, st).decode_stream(z, h, first=first)

  decode = jax.jit(lambda st, z: nnx.merge(graphdef, st).decode(z))
  step = jax.jit(stream_step, static_argnames="first")
  z = jax.random.normal(jax.random.key(0), (1, 5, 2, 3, 16))
  whole = np.asarray(decode(state, z))
  assert whole.shape == (1, 17, 16, 24, 3)
  for splits in ((1, 1, 1, 1, 1), (2, 3)):
    pieces, history, start = [], vae.init_stream((1, 1, 2, 3, 16)), 0
    for i, n in enumerate(splits):
      out, history = step(state, z[:, start:start + n], history, i == 0)
      assert out.shape[1] == (1 + 4 * (n - 1) if i == 0 else 4 * n)
      pieces.append(np.asarray(out))
      start += n
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, atol=1e-5, err_msg=str(splits))
  # Four later 1-frame chunks ran on one compilation; the history keeps one shape throughout.
  assert sorted(traces) == [(1, False), (1, True), (2, True), (3, False)]
  assert jax.tree.map(jnp.shape, vae.init_stream((1, 3, 2, 3, 16))) == jax.tree.map(jnp.shape, history)


def test_real_key_set_fills_the_wan21_preset():
  tensors = []
  with open(os.path.join(fixture_dir("VAE"), "real_keys.tsv")) as f:
    for line in f:
      parts = line.rstrip("\n").split("\t")
      if parts[0] == "key":
        continue
      tensors.append(SourceTensor(parts[0], tuple(json.loads(parts[1])), np.dtype(np.float32), "real", lambda: None))
  assert len(tensors) == 194
  shapes = param_shapes(WAN21_VAE)
  assert len(plan(tensors, shapes, num_layers=0, rules=_COMPILED)) == 194
  assert sum(math.prod(s) for s in shapes.values()) == 126_892_531


def test_converter_names_every_problem():
  tensors, _ = open_source(os.path.join(fixture_dir("VAE"), "model.safetensors"))
  kept = [t for t in tensors if t.key != "decoder.upsamples.3.time_conv.weight"]
  bad = [SourceTensor(t.key, (1, *t.shape), t.dtype, t.shard, t.load) if t.key == "conv2.weight" else t for t in kept]
  with pytest.raises(ConversionError) as e:
    convert_vae_tensors(bad, VAE_TINY)
  msg = str(e.value)
  assert "decoder.upsamples.3.time_conv.kernel" in msg and "conv2.weight: source shape" in msg
