"""Prompt encoding with the on-disk cache."""

import numpy as np
import pytest
from flax import nnx

from rf_jax.text.encode import PromptEncoder, pad_embeddings
from rf_jax.text.tokenizer import byte_tokenizer
from rf_jax.text.umt5 import UMT5Config, UMT5Encoder, wan_embeddings

CFG = UMT5Config(vocab=259, dim=16, dim_attn=16, dim_ffn=32, num_heads=2, num_layers=1, text_len=12)


@pytest.fixture(scope="module")
def encoder():
  return UMT5Encoder(CFG, rngs=nnx.Rngs(0))


def test_rows_are_the_encoder_output_up_to_each_prompt_length_and_are_cached(encoder, tmp_path):
  tok = byte_tokenizer(text_len=12)
  loads = []

  def load():
    loads.append(1)
    return encoder

  enc = PromptEncoder(tok, load, identity="test", cache_dir=str(tmp_path))
  prompts = ["a fox", "snow  falls on the hills", "a fox"]
  rows = enc(prompts)
  ids, mask = tok(prompts)
  direct = np.asarray(wan_embeddings(encoder(ids, mask), mask))
  assert [r.shape for r in rows] == [(6, 16), (12, 16), (6, 16)]  # 5 bytes + EOS; truncated to 11 + EOS
  for r, d in zip(rows, direct):
    np.testing.assert_allclose(r, d[:r.shape[0]], rtol=1e-6, atol=1e-6)
  assert enc.encoded == 2 and loads == [1]  # the repeated prompt is encoded once

  again = PromptEncoder(tok, load, identity="test", cache_dir=str(tmp_path))
  np.testing.assert_array_equal(again(["a  fox "])[0], rows[0])  # same cleaned prompt: a cache hit
  assert again.encoded == 0 and loads == [1]  # nothing loaded
  other = PromptEncoder(tok, load, identity="other weights", cache_dir=str(tmp_path))
  other(["a fox"])
  assert other.encoded == 1  # another encoder never reads this one's entries


def test_damaged_cache_entries_are_recomputed(encoder, tmp_path):
  tok = byte_tokenizer(text_len=12)
  enc = PromptEncoder(tok, lambda: encoder, identity="t", cache_dir=str(tmp_path))
  first = enc(["a fox"])[0]
  (tmp_path / (enc.key("a fox") + ".npy")).write_bytes(b"garbage")
  enc2 = PromptEncoder(tok, lambda: encoder, identity="t", cache_dir=str(tmp_path))
  np.testing.assert_array_equal(enc2(["a fox"])[0], first)
  assert enc2.encoded == 1


def test_padding_to_the_dit_text_length():
  out = pad_embeddings([np.ones((2, 3), np.float32), np.full((4, 3), 2, np.float32)], 5)
  assert out.shape == (2, 5, 3) and out[0, 2:].sum() == 0 and out[1, :4].min() == 2 and out[1, 4].sum() == 0
  with pytest.raises(ValueError, match="does not fit"):
    pad_embeddings([np.ones((6, 3), np.float32)], 5)
