"""Prompts -> the text embeddings the DiT reads, with an on-disk cache so sweeps and repeated runs never re-encode.

    encoder = PromptEncoder(tokenizer, load_umt5, identity="...", cache_dir="~/.cache/rf_jax/text")
    rows = encoder(["a red fox runs through snow"])      # list of float32 [tokens, dim] (EOS included)
    context = pad_embeddings(rows, text_len)              # float32 [P, text_len, dim], zero rows past each prompt

What is cached is Wan's `context` for one prompt: the encoder's output rows up to the prompt's token count (padding
rows are zero by construction, `wan_embeddings`). A cache entry's name hashes the encoder's identity (its
checkpoint's config, meta and file times, or the random seed), the tokenizer's definition and the cleaned prompt, so
another encoder or tokenizer never reads a stale entry. Entries are written atomically; the encoder is loaded only
when some prompt is missing, and dropped right after.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Sequence

import numpy as np

from rf_jax.text.tokenizer import UMT5Tokenizer, clean_prompt

ENCODE_BATCH = 8  # prompts per encoder call


def default_cache_dir() -> str:
  """$RF_JAX_CACHE/text, else ~/.cache/rf_jax/text."""
  root = os.environ.get("RF_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rf_jax")
  return os.path.join(root, "text")


def checkpoint_identity(path: str) -> str:
  """What distinguishes one converted encoder from another without reading its weights: its config and meta
  files, its real path and the modification times of its parameter files."""
  path = os.path.realpath(path)
  h = hashlib.sha256(path.encode())
  for name in ("config.json", "meta.json"):
    try:
      with open(os.path.join(path, name), "rb") as f:
        h.update(f.read())
    except FileNotFoundError:
      pass
  params = os.path.join(path, "params")
  for root, _, files in sorted(os.walk(params)):
    for name in sorted(files):
      st = os.stat(os.path.join(root, name))
      h.update(f"{os.path.relpath(os.path.join(root, name), params)}:{st.st_size}:{st.st_mtime_ns}".encode())
  return h.hexdigest()[:16]


class PromptEncoder:
  """umT5 + tokenizer with a per-prompt cache.

  load_encoder: () -> a `UMT5Encoder` (called at most once, only when a prompt is not cached).
  identity: names the encoder's weights (`checkpoint_identity`, or e.g. "random umt5-tiny seed 0").
  cache_dir: None disables the cache.
  """

  def __init__(self, tokenizer: UMT5Tokenizer, load_encoder: Callable[[], object], *, identity: str,
               cache_dir: str | None = None):
    self.tokenizer = tokenizer
    self._load = load_encoder
    self.identity = identity
    self.cache_dir = cache_dir
    self.encoded = 0  # prompts run through the encoder (not found in the cache)

  def key(self, prompt: str) -> str:
    record = {"encoder": self.identity, "tokenizer": self.tokenizer.fingerprint, "prompt": clean_prompt(prompt)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]

  def _cached(self, prompt: str) -> np.ndarray | None:
    if self.cache_dir is None:
      return None
    path = os.path.join(self.cache_dir, self.key(prompt) + ".npy")
    try:
      arr = np.load(path, allow_pickle=False)
    except (FileNotFoundError, ValueError, OSError):
      return None  # absent or damaged: encode again
    return arr if arr.ndim == 2 and arr.dtype == np.float32 else None

  def _store(self, prompt: str, rows: np.ndarray) -> None:
    if self.cache_dir is None:
      return
    os.makedirs(self.cache_dir, exist_ok=True)
    path = os.path.join(self.cache_dir, self.key(prompt) + ".npy")
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
      np.save(f, rows)
    os.replace(tmp, path)

  def __call__(self, prompts: Sequence[str]) -> list[np.ndarray]:
    """One float32 [tokens, dim] per prompt (tokens counts the EOS)."""
    out: dict[int, np.ndarray] = {}
    missing = []
    for i, p in enumerate(prompts):
      hit = self._cached(p)
      if hit is None:
        missing.append(i)
      else:
        out[i] = hit
    if missing:
      import jax
      import jax.numpy as jnp
      from flax import nnx
      from rf_jax.text.umt5 import wan_embeddings
      encoder = self._load()
      graphdef, state = nnx.split(encoder)

      @jax.jit
      def run(state, ids, mask):  # ids, mask [b, text_len]
        return wan_embeddings(nnx.merge(graphdef, state)(ids, mask), mask).astype(jnp.float32)

      unique = list(dict.fromkeys(prompts[i] for i in missing))
      encoded: dict[str, np.ndarray] = {}
      batch = min(len(unique), ENCODE_BATCH)
      for start in range(0, len(unique), batch):
        group = unique[start:start + batch]
        ids, mask = self.tokenizer(group + [group[-1]] * (batch - len(group)))  # one compiled shape
        hidden = np.asarray(run(state, ids, mask))
        for k, p in enumerate(group):
          encoded[p] = np.ascontiguousarray(hidden[k, :int(mask[k].sum())])
          self._store(p, encoded[p])
      self.encoded += len(unique)
      del encoder, state, run
      for i in missing:
        out[i] = encoded[prompts[i]]
    return [out[i] for i in range(len(prompts))]


def pad_embeddings(rows: Sequence[np.ndarray], text_len: int) -> np.ndarray:
  """[tokens_i, dim] each -> float32 [P, text_len, dim] with zero rows past each prompt (as the DiT pads them)."""
  dim = rows[0].shape[1]
  out = np.zeros((len(rows), text_len, dim), np.float32)
  for i, r in enumerate(rows):
    if r.shape[0] > text_len or r.shape[1] != dim:
      raise ValueError(f"prompt {i}: embedding {r.shape} does not fit [{text_len}, {dim}]")
    out[i, :r.shape[0]] = r
  return out


def read_prompts(prompts: Sequence[str] = (), prompts_file: str | None = None) -> list[str]:
  """`prompts` (--prompt, repeatable) then the lines of `prompts_file` (--prompts; blank lines and lines starting
  with # skipped)."""
  found = list(prompts)
  if prompts_file:
    try:
      with open(prompts_file, encoding="utf-8") as f:
        lines = f.read().splitlines()
    except FileNotFoundError:
      raise ValueError(f"--prompts {prompts_file}: no such file") from None
    except UnicodeDecodeError as e:
      raise ValueError(f"--prompts {prompts_file}: not UTF-8 text ({e})") from None
    read = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not read:
      raise ValueError(f"--prompts {prompts_file}: holds no prompt")
    found += read
  if any(not p.strip() for p in found):
    raise ValueError("--prompt is empty")
  return found


def load_text_embeddings(path: str, batch: int, text_len: int, text_dim: int) -> np.ndarray:
  """A .npy of [P, text_dim] or [B, P, text_dim] (P <= text_len) -> float32 [B, P, text_dim]."""
  try:
    arr = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise ValueError(f"--text-embeddings {path}: no such file") from None
  except ValueError as e:
    raise ValueError(f"--text-embeddings {path}: not a plain .npy array ({e})") from None
  stored = arr.shape
  if arr.ndim == 2:
    arr = np.broadcast_to(arr, (batch, *arr.shape))
  if arr.ndim != 3 or arr.shape[0] != batch or arr.shape[1] > text_len or arr.shape[2] != text_dim:
    raise ValueError(f"--text-embeddings {path}: shape {stored}; expected [P, {text_dim}] or "
                     f"[{batch}, P, {text_dim}] with P <= {text_len}")
  if arr.shape[1] == 0:
    raise ValueError(f"--text-embeddings {path}: holds no rows (shape {stored}); a prompt needs at least one")
  if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
    raise ValueError(f"--text-embeddings {path}: expected finite floating-point values, got {arr.dtype}")
  return np.ascontiguousarray(arr, np.float32)
