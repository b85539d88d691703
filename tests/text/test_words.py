"""The one-word prompt encoder of the conditional demo."""

import numpy as np
import pytest

from rf_jax.text.words import WordEncoder


def test_fixed_vectors_are_deterministic_distinct_and_of_unit_rms():
  a = WordEncoder.fixed(("black", "blue", "red"), 16)
  b = WordEncoder.fixed(("black", "blue", "red"), 16)
  np.testing.assert_array_equal(a.table, b.table)
  np.testing.assert_allclose(np.sqrt((a.table ** 2).mean(1)), 1.0, rtol=1e-6)
  cos = a.table @ a.table.T / 16
  assert np.abs(cos[~np.eye(3, dtype=bool)]).max() < 0.9
  assert not np.array_equal(a.table, WordEncoder.fixed(("black", "blue", "red"), 16, seed=1).table)


def test_a_prompt_is_its_word_in_every_row_and_an_unknown_word_is_named():
  enc = WordEncoder.fixed(("black", "blue"), 8)
  out = enc(["blue", " Black "], text_len=3)
  assert out.shape == (2, 3, 8) and out.dtype == np.float32
  np.testing.assert_array_equal(out[0], np.repeat(enc.table[1][None], 3, 0))
  np.testing.assert_array_equal(out[1, 2], enc.table[0])
  with pytest.raises(ValueError, match="'a red fox': this model knows the prompts black, blue"):
    enc(["a red fox"], 3)


def test_the_table_round_trips_through_json():
  import json
  enc = WordEncoder.fixed(("green", "red"), 4)
  back = WordEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
  assert back.words == enc.words
  np.testing.assert_array_equal(back.table, enc.table)
  with pytest.raises(ValueError, match="distinct"):
    WordEncoder(("a", "a"), np.zeros((2, 4), np.float32))
