"""Wan's prompt tokenization for umT5, without transformers: the `google/umt5-xxl` tokenizer files through the
`tokenizers` library.

    clean:     ftfy.fix_text, html.unescape twice, strip, every whitespace run -> one space (no lower-casing)
    tokenize:  no BOS; truncated to text_len - 1 tokens, then EOS (</s> = 1); right-padded with <pad> = 0
    mask:      1 on the tokens and the EOS, 0 on padding

which is what `HuggingfaceTokenizer(seq_len=512, clean='whitespace')` returns for `padding='max_length',
truncation=True, add_special_tokens=True`.

`byte_tokenizer()` is a built-in stand-in for the random tiny pipeline: <pad>, </s>, <unk>, then one token per UTF-8
byte (259 ids, umT5-tiny's vocabulary), made with the same library, so no file is needed to run it.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
from typing import Sequence

import numpy as np

TOKENIZER_FILE = "tokenizer.json"


def clean_prompt(text: str) -> str:
  import ftfy
  text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return re.sub(r"\s+", " ", text).strip()


class UMT5Tokenizer:
  def __init__(self, tokenizer, *, text_len: int = 512, pad_id: int = 0, eos_id: int = 1, source: str = ""):
    self._tok = tokenizer
    self.text_len = text_len
    self.pad_id = pad_id
    self.eos_id = eos_id
    self.source = source

  @classmethod
  def from_dir(cls, path: str, *, text_len: int = 512) -> "UMT5Tokenizer":
    """A folder holding `tokenizer.json` (e.g. `Wan2.1-T2V-1.3B/google/umt5-xxl/`), or that file itself."""
    from tokenizers import Tokenizer
    file = path if path.endswith(".json") else os.path.join(path, TOKENIZER_FILE)
    if not os.path.isfile(file):
      found = sorted(os.listdir(path)) if os.path.isdir(path) else []
      raise ValueError(f"umT5 tokenizer: no {TOKENIZER_FILE} at {path!r}"
                       + (f" (the folder holds {found[:8]})" if found else "")
                       + "; point to the model's google/umt5-xxl folder")
    try:
      tok = Tokenizer.from_file(file)
    except Exception as e:  # the library raises a bare Exception on malformed files
      raise ValueError(f"umT5 tokenizer: {file} is not a tokenizers JSON file ({e})") from None
    pad = tok.token_to_id("<pad>")
    eos = tok.token_to_id("</s>")
    return cls(tok, text_len=text_len, pad_id=0 if pad is None else pad, eos_id=1 if eos is None else eos,
               source=file)

  @property
  def vocab_size(self) -> int:
    return self._tok.get_vocab_size()

  @property
  def fingerprint(self) -> str:
    """A hash of the tokenizer's whole definition and settings (the text cache's key includes it)."""
    text = f"{self._tok.to_str()}|{self.text_len}|{self.pad_id}|{self.eos_id}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]

  def save(self, folder: str) -> str:
    """Writes `tokenizer.json` into `folder` (for a pipeline folder); returns its path."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, TOKENIZER_FILE)
    self._tok.save(path)
    return path

  def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """prompts -> (ids, mask), int32 [len(prompts), text_len] each."""
    if isinstance(prompts, str):
      prompts = [prompts]
    ids = np.full((len(prompts), self.text_len), self.pad_id, np.int32)
    mask = np.zeros((len(prompts), self.text_len), np.int32)
    for i, text in enumerate(prompts):
      tokens = self._tok.encode(clean_prompt(text), add_special_tokens=False).ids[:self.text_len - 1]
      tokens = [*tokens, self.eos_id]
      ids[i, :len(tokens)] = tokens
      mask[i, :len(tokens)] = 1
    return ids, mask


def byte_tokenizer(*, text_len: int = 512) -> UMT5Tokenizer:
  """<pad>=0, </s>=1, <unk>=2 and the 256 bytes (as GPT-2's byte-level alphabet) = 3 .. 258; no merges."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{c: 3 + i for i, c in enumerate(alphabet)}}
  tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = decoders.ByteLevel()
  return UMT5Tokenizer(tok, text_len=text_len, source="built-in byte tokenizer")
