"""Prompt cleaning and tokenization (a small tokenizer made here; no download)."""

import numpy as np
import pytest

from rf_jax.text.tokenizer import UMT5Tokenizer, clean_prompt


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
  from tokenizers import Tokenizer, models, pre_tokenizers
  words = ["<pad>", "</s>", "<unk>", "a", "red", "fox", "runs", "&", "café", "über", "snow", "—", "!"]
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  path = tmp_path_factory.mktemp("umt5")
  tok.save(str(path / "tokenizer.json"))
  return str(path)


def test_cleaning():
  assert clean_prompt("  a   red\n\tfox  ") == "a red fox"
  assert clean_prompt("a &amp;amp; b") == "a & b"  # unescaped twice
  assert clean_prompt("cafÃ©") == "café"  # mojibake repaired (ftfy)
  assert clean_prompt("A Red Fox!") == "A Red Fox!"  # no lower-casing, punctuation kept


def test_ids_eos_padding_and_mask(tokenizer_dir):
  tok = UMT5Tokenizer.from_dir(tokenizer_dir, text_len=8)
  ids, mask = tok(["a  red fox", "über &amp; café", "unknown"])
  assert ids.tolist()[0] == [3, 4, 5, 1, 0, 0, 0, 0]
  assert ids.tolist()[1] == [9, 7, 8, 1, 0, 0, 0, 0]
  assert ids.tolist()[2] == [2, 1, 0, 0, 0, 0, 0, 0]
  assert mask.tolist()[0] == [1, 1, 1, 1, 0, 0, 0, 0] and mask.dtype == np.int32


def test_over_long_prompts_keep_the_eos(tokenizer_dir):
  tok = UMT5Tokenizer.from_dir(tokenizer_dir, text_len=8)
  ids, mask = tok("a red fox runs " * 10)
  assert ids.tolist() == [[3, 4, 5, 6, 3, 4, 5, 1]] and mask.sum() == 8


def test_missing_files_are_named(tmp_path):
  (tmp_path / "spiece.model").write_bytes(b"x")
  with pytest.raises(ValueError, match=r"no tokenizer.json at .*spiece.model.*google/umt5-xxl"):
    UMT5Tokenizer.from_dir(str(tmp_path))
  bad = tmp_path / "tokenizer.json"
  bad.write_text("{not json")
  with pytest.raises(ValueError, match="not a tokenizers JSON file"):
    UMT5Tokenizer.from_dir(str(tmp_path))
