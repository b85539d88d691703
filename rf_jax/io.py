"""Writing outputs without losing any: folders assembled under a temporary name and renamed into place, JSON and
byte files replaced atomically, a .npy written chunk by chunk at fixed offsets, and the multi-process variant of
the atomic folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from typing import Any, Iterator

import numpy as np

from rf_jax.parallel.distributed import barrier, is_leader


@contextlib.contextmanager
def atomic_directory(dest: str | os.PathLike, *, force: bool = False) -> Iterator[str]:
  """Yields a fresh temporary folder beside `dest`; on success it replaces `dest` (only with `force`)."""
  dest = os.path.abspath(os.fspath(dest))
  if os.path.exists(dest) and not force:
    raise FileExistsError(f"{dest} already exists; pass --force to replace it")
  parent = os.path.dirname(dest)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.partial-", dir=parent)
  try:
    yield tmp
    if os.path.exists(dest):
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old-", dir=parent)
      os.rename(dest, os.path.join(old, "x"))
      os.rename(tmp, dest)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, dest)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def write_json_atomic(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def replace_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file renamed over it."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as fh:
    fh.write(data)
  os.replace(tmp, path)


def append_jsonl(path: str, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record, sort_keys=True) + "\n")


@contextlib.contextmanager
def shared_directory(dest: str, *, force: bool = False) -> Iterator[str]:
  """`atomic_directory` for several processes writing one OUT (on a file system they share): process 0 makes
  OUT.partial, everyone writes into it, and process 0 renames it into place once all are done."""
  import jax
  if jax.process_count() == 1:
    with atomic_directory(dest, force=force) as tmp:
      yield tmp
    return
  dest = os.path.abspath(dest)
  tmp = dest + ".partial"
  if os.path.exists(dest) and not force:  # every process sees it and stops
    raise FileExistsError(f"{dest} already exists; pass --force to replace it")
  if is_leader():
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
  barrier("rf_jax.io.open")
  yield tmp
  barrier("rf_jax.io.written")
  if is_leader():
    if os.path.exists(dest):
      shutil.rmtree(dest)
    os.rename(tmp, dest)
  barrier("rf_jax.io.renamed")


class LatentWriter:
  """Writes [B, frames, C, H, W] float32 into a .npy chunk by chunk with positioned writes (nothing kept in RAM).

  With several processes, process 0 creates the file (`create`) and every process writes only the samples it owns.
  """

  def __init__(self, path: str, shape: tuple[int, ...]):
    self.shape = shape
    self.offset = len(self._header(shape))
    self.fd = os.open(path, os.O_WRONLY)
    self.frame_bytes = int(np.prod(shape[2:])) * 4

  @staticmethod
  def _header(shape) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                                               "fortran_order": False, "shape": shape})
    return buf.getvalue()

  @classmethod
  def create(cls, path: str, shape: tuple[int, ...]) -> None:
    header = cls._header(shape)
    with open(path, "wb") as f:
      f.write(header)
      f.truncate(len(header) + int(np.prod(shape)) * 4)

  def write(self, first_frame: int, chunk: np.ndarray, first_sample: int = 0) -> None:
    """chunk: [b, F, C, H, W], samples first_sample .. first_sample + b - 1."""
    b = chunk.shape[0]
    for i in range(b):
      at = self.offset + ((first_sample + i) * self.shape[1] + first_frame) * self.frame_bytes
      os.pwrite(self.fd, np.ascontiguousarray(chunk[i], np.float32).tobytes(), at)

  def close(self) -> None:
    os.fsync(self.fd)
    os.close(self.fd)


def load_latents(path: str, *, in_dim: int, latent_hw: tuple[int, int], what: str = "--init-latents") -> np.ndarray:
  """A .npy of latents [n, C, H, W] or [1, n, C, H, W] (latents.npy's layout) -> float32 [1, n, H, W, C]."""
  try:
    arr = np.load(path, allow_pickle=False)
  except FileNotFoundError:
    raise ValueError(f"{what} {path}: no such file") from None
  except ValueError as e:
    raise ValueError(f"{what} {path}: not a plain .npy array ({e})") from None
  hl, wl = latent_hw
  arr = arr[None] if arr.ndim == 4 else arr
  if arr.ndim != 5 or arr.shape[0] != 1 or arr.shape[2:] != (in_dim, hl, wl):
    raise ValueError(f"{what} {path}: shape {arr.shape}; expected [n, {in_dim}, {hl}, {wl}] or "
                     f"[1, n, {in_dim}, {hl}, {wl}]")
  if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
    raise ValueError(f"{what} {path}: expected finite floating-point values")
  return np.moveaxis(arr.astype(np.float32), 2, -1)
