"""A one-word text encoder: each word of a small vocabulary is a fixed vector, and a prompt is one of the words.

The conditional demo model (configs/train/demo_backdrop.py) reads its prompts this way instead of through umT5:

    words = WordEncoder.fixed(("black", "blue"), dim=16)     # vectors from a fixed seed
    context = words(["blue", "black"], text_len=4)            # float32 [2, 4, 16]: the word's vector in every row

The table travels with the model (`to_dict`/`from_dict`, the demo's demo.json), so a model keeps the vectors it was
trained with.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class WordEncoder:
  words: tuple[str, ...]
  table: np.ndarray  # float32 [len(words), dim]

  def __post_init__(self):
    if len(set(self.words)) != len(self.words) or not self.words:
      raise ValueError(f"WordEncoder: the words must be distinct and at least one (got {self.words})")
    if self.table.shape[0] != len(self.words) or self.table.ndim != 2:
      raise ValueError(f"WordEncoder: the table is {self.table.shape}, expected [{len(self.words)}, dim]")

  @classmethod
  def fixed(cls, words: Sequence[str], dim: int, *, seed: int = 0) -> "WordEncoder":
    """Vectors of unit root-mean-square drawn from Philox(seed), one per word in order."""
    rng = np.random.Generator(np.random.Philox(key=seed))
    table = rng.standard_normal((len(words), dim))
    table /= np.sqrt(np.mean(table * table, axis=1, keepdims=True))
    return cls(tuple(words), table.astype(np.float32))

  @property
  def dim(self) -> int:
    return self.table.shape[1]

  def index(self, prompt: str) -> int:
    word = prompt.strip().lower()
    if word not in self.words:
      raise ValueError(f"prompt {prompt!r}: this model knows the prompts {', '.join(self.words)}")
    return self.words.index(word)

  def __call__(self, prompts: Sequence[str], text_len: int) -> np.ndarray:
    """[P, text_len, dim]: each prompt's vector repeated in every row."""
    rows = self.table[[self.index(p) for p in prompts]]  # [P, dim]
    return np.repeat(rows[:, None, :], text_len, axis=1)

  def to_dict(self) -> dict[str, Any]:
    return {"words": list(self.words), "table": self.table.tolist()}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "WordEncoder":
    return cls(tuple(d["words"]), np.asarray(d["table"], np.float32))
