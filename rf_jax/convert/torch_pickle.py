"""A reader for PyTorch `.pt`/`.pth` files that never runs pickled code and needs no torch.

`torch.save` writes a zip archive: `<root>/data.pkl` (a pickle of the object tree) and one raw little-endian file
per tensor storage under `<root>/data/`. The pickle names the functions that rebuild tensors; an ordinary
`pickle.load` would import and call whatever the file names, which is how a malicious checkpoint runs code. This
unpickler resolves only an allow-list of names (tensor rebuilding, storage types, dtypes, OrderedDict) to inert
stand-ins and refuses every other global, naming it. Tensors come back as `LazyTensor`s that read their bytes from
the archive only when asked, so a large checkpoint is never held in memory all at once.

The legacy (pre-1.6, non-zip) format is refused: convert such a file with a trusted PyTorch first.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["LazyTensor", "UnsafePickleError", "load_pt"]


class UnsafePickleError(pickle.UnpicklingError, ValueError):
  """The pickle names a global that is not on the allow-list (it could run code)."""


_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}

_TORCH_DTYPES = {
    "float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16, "int64": np.int64,
    "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16, "int8": np.int8,
    "uint8": np.uint8, "bool": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
  archive: "_Archive"
  key: str
  dtype: np.dtype
  numel: int


class _Archive:
  """The zip archive and its record prefix; storages are read one at a time."""

  def __init__(self, path: str, zf: zipfile.ZipFile, prefix: str, byteorder: str):
    self.path, self.zf, self.prefix, self.byteorder = path, zf, prefix, byteorder

  def read_storage(self, storage: _Storage) -> np.ndarray:
    name = f"{self.prefix}data/{storage.key}"
    try:
      raw = self.zf.read(name)
    except KeyError:
      raise ValueError(f"{self.path}: storage record {name!r} is missing (truncated or corrupt file)") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      raise ValueError(f"{self.path}: cannot read storage record {name!r}: {e}") from None
    want = storage.numel * storage.dtype.itemsize
    if len(raw) < want:
      raise ValueError(f"{self.path}: storage record {name!r} has {len(raw)} bytes, expected {want} "
                       "(truncated file)")
    dtype = storage.dtype.newbyteorder(">") if self.byteorder == "big" and storage.dtype.itemsize > 1 else \
        storage.dtype
    return np.frombuffer(raw, dtype=dtype, count=storage.numel).astype(storage.dtype, copy=False)


@dataclasses.dataclass(frozen=True)
class LazyTensor:
  """A tensor of a `.pt` file whose data is read on `numpy()`."""
  storage: _Storage
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]

  @property
  def dtype(self) -> np.dtype:
    return self.storage.dtype

  def numpy(self) -> np.ndarray:
    flat = self.storage.archive.read_storage(self.storage)
    if not self.shape:
      return flat[self.offset].copy()
    last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride) if n > 0)
    if any(n == 0 for n in self.shape):
      return np.zeros(self.shape, self.dtype)
    if self.offset < 0 or last >= flat.size or any(s < 0 for s in self.stride):
      raise ValueError(f"{self.storage.archive.path}: tensor (shape {self.shape}, stride {self.stride}, offset "
                       f"{self.offset}) reaches past its storage of {flat.size} elements (corrupt file)")
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[self.offset:], shape=self.shape,
                                           strides=tuple(s * item for s in self.stride))
    return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError(f"_rebuild_tensor_v2 got {type(storage).__name__}, expected a storage")
  return LazyTensor(storage, int(storage_offset), tuple(int(s) for s in size), tuple(int(s) for s in stride))


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *_):
  return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
  return data


# (module, name) -> stand-in. Anything else is refused.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("collections", "OrderedDict"): collections.OrderedDict,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): np.dtype(dtype) for name, dtype in _TORCH_DTYPES.items()},
}


class _RestrictedUnpickler(pickle.Unpickler):

  def __init__(self, file, archive: _Archive):
    super().__init__(file)
    self.archive = archive

  def find_class(self, module: str, name: str):
    try:
      return _ALLOWED[(module, name)]
    except KeyError:
      raise UnsafePickleError(
          f"{self.archive.path}: refusing to load global '{module}.{name}': only tensors, storages, dtypes and "
          "plain containers may appear in a checkpoint (a pickle that names other code can execute it)") from None

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"{self.archive.path}: unsupported persistent id {pid!r}")
    _, storage_type, key, _location, numel = pid
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"{self.archive.path}: unsupported storage type {storage_type!r}")
    return _Storage(self.archive, str(key), storage_type.dtype, int(numel))


def load_pt(path: str | os.PathLike) -> Any:
  """Reads the object tree of a zip-format `.pt` file; tensors come back as `LazyTensor`s.

  The returned tensors read from the open archive: keep using them while the archive is alive (it is closed when
  the last reference goes).
  """
  path = os.fspath(path)
  if not zipfile.is_zipfile(path):
    with open(path, "rb") as f:
      head = f.read(2)
    if head[:1] == b"\x80":
      raise ValueError(f"{path}: legacy (non-zip) PyTorch format; re-save it with torch >= 1.6 "
                       "(`torch.save(obj, path)`) in a trusted environment first")
    raise ValueError(f"{path}: not a PyTorch zip archive (truncated or not a .pt file)")
  zf = zipfile.ZipFile(path)
  names = zf.namelist()
  pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
  if len(pkl) != 1:
    raise ValueError(f"{path}: expected one '<root>/data.pkl' record in the archive, found {pkl}")
  prefix = pkl[0][: -len("data.pkl")]
  byteorder = "little"
  if f"{prefix}byteorder" in names:
    byteorder = zf.read(f"{prefix}byteorder").decode().strip()
  archive = _Archive(path, zf, prefix, byteorder)
  try:
    with zf.open(pkl[0]) as f:
      return _RestrictedUnpickler(f, archive).load()
  except UnsafePickleError:
    raise
  except (EOFError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
    raise ValueError(f"{path}: cannot read {pkl[0]}: {e} (truncated or corrupt file)") from None
