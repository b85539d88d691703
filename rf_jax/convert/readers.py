"""Lazy, safe readers for PyTorch weight files: safetensors (single or sharded) and `.pt`/`.pth`.

Every reader lists the tensors (key, shape, dtype) without reading their data; data is read one tensor at a time,
shard by shard, so memory stays bounded by the largest tensor.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from typing import Any, Callable

import ml_dtypes
import numpy as np

from rf_jax.convert.torch_pickle import LazyTensor, load_pt

__all__ = ["SourceTensor", "open_source", "read_safetensors_index", "list_safetensors"]

_ST_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class SourceTensor:
  key: str
  shape: tuple[int, ...]
  dtype: np.dtype
  shard: str  # the file it lives in
  load: Callable[[], np.ndarray] = dataclasses.field(repr=False, compare=False)


def list_safetensors(path: str) -> list[SourceTensor]:
  """Reads a .safetensors header and returns its tensors, checking that every byte range lies in the file."""
  try:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise ValueError(f"{path}: too short for a safetensors file ({size} bytes)")
      (n,) = struct.unpack("<Q", head)
      if n > size - 8:
        raise ValueError(f"{path}: header length {n} runs past the end of the {size}-byte file (truncated)")
      header = json.loads(f.read(n))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: corrupt safetensors header ({e})") from None
  except FileNotFoundError:
    raise ValueError(f"{path}: no such file") from None
  base = 8 + n
  tensors = []
  for key, info in header.items():
    if key == "__metadata__":
      continue
    if info.get("dtype") not in _ST_DTYPES:
      raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {info.get('dtype')!r}")
    dtype = np.dtype(_ST_DTYPES[info["dtype"]])
    shape = tuple(int(s) for s in info["shape"])
    begin, end = (int(o) for o in info["data_offsets"])
    if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
      raise ValueError(f"{path}: tensor {key!r} has {end - begin} bytes for shape {shape} {dtype}")
    if base + end > size:
      raise ValueError(f"{path}: tensor {key!r} ends at byte {base + end} but the file has {size} (truncated)")

    def load(path=path, offset=base + begin, dtype=dtype, shape=shape):
      with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
      return np.frombuffer(data, dtype=dtype).reshape(shape)

    tensors.append(SourceTensor(key, shape, dtype, path, load))
  return tensors


def read_safetensors_index(path: str) -> list[SourceTensor]:
  """A sharded checkpoint's `*.safetensors.index.json`: the tensors of every shard, shard by shard."""
  try:
    with open(path) as f:
      weight_map = json.load(f)["weight_map"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(f"{path}: not a safetensors index (needs a 'weight_map'): {e}") from None
  folder = os.path.dirname(path)
  tensors = []
  for shard in sorted(set(weight_map.values())):
    shard_path = os.path.join(folder, shard)
    if not os.path.exists(shard_path):
      raise ValueError(f"{path}: shard {shard!r} named by the index is missing")
    listed = list_safetensors(shard_path)
    keys = {t.key for t in listed}
    expected = {k for k, s in weight_map.items() if s == shard}
    if keys != expected:
      raise ValueError(f"{shard_path}: holds {sorted(keys - expected)[:5]} not in the index and lacks "
                       f"{sorted(expected - keys)[:5]} that the index places there")
    tensors.extend(listed)
  return tensors


_PT_WEIGHT_KEYS = ("generator_ema", "generator", "model", "state_dict")


def _state_dict_from_pt(obj: Any, path: str, weights: str | None) -> tuple[dict[str, LazyTensor], str | None]:
  def is_state_dict(d):
    return isinstance(d, dict) and d and all(isinstance(v, LazyTensor) for v in d.values())

  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a dict (a state dict or a checkpoint of state dicts), got "
                     f"{type(obj).__name__}")
  if weights is not None:
    if weights not in obj:
      raise ValueError(f"{path}: has no entry {weights!r}; its top-level keys are {sorted(map(str, obj))}")
    if not is_state_dict(obj[weights]):
      raise ValueError(f"{path}: entry {weights!r} is not a state dict of tensors")
    return dict(obj[weights]), weights
  if is_state_dict(obj):
    return dict(obj), None
  for key in _PT_WEIGHT_KEYS:
    if key in obj and is_state_dict(obj[key]):
      return dict(obj[key]), key
  dicts = [k for k in obj if is_state_dict(obj[k])]
  nameable = [k for k in dicts if k in _PT_WEIGHT_KEYS]
  hint = (f"pass --weights {' or '.join(nameable)}" if nameable else
          f"the state dicts it holds are under {dicts}, which --weights cannot name ({', '.join(_PT_WEIGHT_KEYS)}); "
          "re-save the one you want alone" if dicts else "none of its entries is a state dict of tensors")
  raise ValueError(f"{path}: found no state dict at the top or under {', '.join(_PT_WEIGHT_KEYS)}; top-level keys "
                   f"are {sorted(map(str, obj))} ({hint})")


def open_source(path: str | os.PathLike, *, weights: str | None = None) -> tuple[list[SourceTensor], dict]:
  """Lists the tensors of a weight file or folder. Returns (tensors, info) where info records what was read.

  `path` may be a `.safetensors` file, a `*.safetensors.index.json`, a folder holding either (a Wan model folder),
  or a `.pt`/`.pth` file: a plain state dict or a Self-Forcing checkpoint ({'generator', 'generator_ema', ...};
  `weights` picks the entry, default `generator_ema` when present).
  """
  path = os.fspath(path)
  info: dict[str, Any] = {"source": os.path.abspath(path)}
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file or folder")
  if os.path.isdir(path):
    entries = sorted(os.listdir(path))
    index = [e for e in entries if e.endswith(".safetensors.index.json")]
    single = [e for e in entries if e.endswith(".safetensors")]
    if len(index) == 1:
      path = os.path.join(path, index[0])
    elif "diffusion_pytorch_model.safetensors" in single:
      path = os.path.join(path, "diffusion_pytorch_model.safetensors")
    elif len(single) == 1:
      path = os.path.join(path, single[0])
    else:
      raise ValueError(f"{path}: cannot tell which weights to read (index files {index}, safetensors {single}); "
                       "name the file")
  is_pt = path.endswith((".pt", ".pth", ".bin", ".ckpt"))
  if weights is not None and not is_pt:
    raise ValueError(f"{path}: --weights {weights!r} applies only to .pt checkpoints")
  if path.endswith(".safetensors.index.json"):
    tensors = read_safetensors_index(path)
  elif path.endswith(".safetensors"):
    tensors = list_safetensors(path)
  elif is_pt:
    state, picked = _state_dict_from_pt(load_pt(path), path, weights)
    info["weights"] = picked
    tensors = [SourceTensor(k, t.shape, t.dtype, path, t.numpy) for k, t in state.items()]
  else:
    raise ValueError(f"{path}: unknown weight format (expected .safetensors, .safetensors.index.json, .pt or .pth)")
  keys = [t.key for t in tensors]
  for prefix in ("model.", "_orig_mod.", "module."):
    if keys and all(k.startswith(prefix) for k in keys):
      tensors = [dataclasses.replace(t, key=t.key[len(prefix):]) for t in tensors]
      info["stripped_prefix"] = prefix
      break
  info["resolved"] = os.path.abspath(path)
  return tensors, info
