"""Writing outputs without losing any: folders assembled under a temporary name and renamed into place (never over
an existing OUT without `force`, and never by two runs at once: a lock beside OUT), JSON and byte files replaced
atomically, a .npy written chunk by chunk at fixed offsets, the multi-process variant of the atomic folder, and a
resumable folder that a killed run leaves for `--resume`.

Leftovers: a temporary folder is named `.OUT.partial-PID-XXXX`; the next run on the same OUT removes those whose
process is gone, and says so on stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import io
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Iterator

import numpy as np

from rf_jax.parallel.distributed import barrier, is_leader


def rename_noreplace(src: str, dst: str) -> None:
  """Renames `src` to `dst`, failing with FileExistsError when `dst` exists, atomically (Linux renameat2
  RENAME_NOREPLACE; elsewhere a check, then the rename)."""
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    renameat2 = None
  if renameat2 is not None:
    at_fdcwd, noreplace = -100, 1
    if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), noreplace) == 0:
      return
    err = ctypes.get_errno()
    if err == errno.EEXIST:
      raise FileExistsError(errno.EEXIST, "exists", dst)
    if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
      raise OSError(err, os.strerror(err), dst)
  if os.path.lexists(dst):
    raise FileExistsError(errno.EEXIST, "exists", dst)
  os.rename(src, dst)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def clean_leftovers(parent: str, prefix: str, *, what: str) -> list[str]:
  """Removes `parent/prefix<PID>-*` folders and files whose process is gone (leftovers of killed runs) and says so
  on stderr. Returns what was removed."""
  removed = []
  try:
    names = os.listdir(parent)
  except FileNotFoundError:
    return removed
  for name in names:
    if not name.startswith(prefix):
      continue
    pid = name[len(prefix):].split("-", 1)[0]
    if not pid.isdigit() or _alive(int(pid)):
      continue
    path = os.path.join(parent, name)
    shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)
    removed.append(path)
    print(f"rf-jax: removed {what} left by a killed run (process {pid}): {path}", file=sys.stderr)
  return removed


def check_unlocked(dest: str) -> None:
  """Raises, naming the process, when another run holds the OUT lock of `dest` (a cheap early check; `out_lock`
  is what guarantees it)."""
  dest = os.path.abspath(dest)
  path = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.lock")
  try:
    fd = os.open(path, os.O_RDONLY)
  except FileNotFoundError:
    return
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    raise FileExistsError(f"{dest} is being written by another run (process {holder}); wait for it to finish or "
                          "choose another --out") from None
  finally:
    os.close(fd)


@contextlib.contextmanager
def out_lock(dest: str) -> Iterator[None]:
  """Holds `.OUT.lock` beside `dest` for the block: a second run writing the same OUT stops at once, naming the
  first one's process."""
  parent, base = os.path.dirname(dest), os.path.basename(dest)
  os.makedirs(parent, exist_ok=True)
  path = os.path.join(parent, f".{base}.lock")
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    os.close(fd)
    raise FileExistsError(f"{dest} is being written by another run (process {holder}); wait for it to finish or "
                          "choose another --out") from None
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)
    os.close(fd)


def single_writer(dest: str):
  """The OUT lock for a folder written in place and resumed (a sweep, a training run): held by a run of one
  process; a run of several processes relies on its launcher (each process would hold it against the others)."""
  import jax
  return out_lock(os.path.abspath(dest)) if jax.process_count() == 1 else contextlib.nullcontext()


def _replace(tmp: str, dest: str, force: bool) -> None:
  """Puts the finished folder `tmp` at `dest`: over an existing `dest` only with `force`; without it, a `dest` that
  appeared meanwhile is left alone and this run's output is kept beside it under a name that is said."""
  parent = os.path.dirname(dest)
  if force and os.path.exists(dest):
    old = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.old-{os.getpid()}-", dir=parent)
    os.rename(dest, os.path.join(old, "x"))
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return
  try:
    rename_noreplace(tmp, dest)
  except FileExistsError:
    kept = f"{dest}.conflict-{os.getpid()}"
    os.rename(tmp, kept)
    raise FileExistsError(f"{dest} appeared while this run was writing it (another run?); it was left as it is "
                          f"and this run's output is at {kept}") from None


@contextlib.contextmanager
def atomic_directory(dest: str | os.PathLike, *, force: bool = False) -> Iterator[str]:
  """Yields a fresh temporary folder beside `dest`; on success it becomes `dest` (an existing `dest` is replaced
  only with `force`). Holds the OUT lock throughout, and first removes leftovers of killed runs on this OUT."""
  dest = os.path.abspath(os.fspath(dest))
  if os.path.exists(dest) and not force:
    raise FileExistsError(f"{dest} already exists; pass --force to replace it")
  parent = os.path.dirname(dest)
  with out_lock(dest):
    clean_leftovers(parent, f".{os.path.basename(dest)}.partial-", what="an unfinished output")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)}.partial-{os.getpid()}-", dir=parent)
    try:
      yield tmp
      _replace(tmp, dest, force)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise


@contextlib.contextmanager
def resumable_directory(dest: str | os.PathLike, *, force: bool = False, resume: bool = False
                        ) -> Iterator[tuple[str, bool]]:
  """Like `atomic_directory`, but the folder is `.OUT.partial` and survives a failure or a kill, so that a run with
  `resume` continues it: yields (folder, whether it is being resumed). Without `resume`, an unfinished run there is
  an error (nothing is discarded silently) unless `force` discards it."""
  dest = os.path.abspath(os.fspath(dest))
  if os.path.exists(dest) and not force:
    raise FileExistsError(f"{dest} already exists; pass --force to replace it")
  parent = os.path.dirname(dest)
  tmp = os.path.join(parent, f".{os.path.basename(dest)}.partial")
  with out_lock(dest):
    resuming = os.path.isdir(tmp)
    if resuming and not resume:
      if not force:
        raise FileExistsError(f"{dest}: an unfinished run is at {tmp}; pass --resume to continue it, or --force to "
                              "discard it")
      shutil.rmtree(tmp)
      resuming = False
    if resume and not resuming:
      raise ValueError(f"--resume: there is no unfinished run of {dest} to continue ({tmp} does not exist)")
    os.makedirs(tmp, exist_ok=True)
    try:
      yield tmp, resuming
    except BaseException:
      print(f"rf-jax: the unfinished run is kept at {tmp}; the same command with --resume continues it",
            file=sys.stderr)
      raise
    _replace(tmp, dest, force)


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
