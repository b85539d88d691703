"""`rf-jax generate`: a whole video's latents from a model, a memory policy and a seed.

Outputs (written into a temporary folder beside OUT and renamed into place at the end, so a killed run leaves no
half-written OUT):
  latents.npy        float32 [B, frames, C, H, W] (the PyTorch pipeline's layout), streamed chunk by chunk
  memory_trace.json  per chunk: what the memory held, the RoPE positions, candidates/scores/choice, promotions
  summary.json       frames, chunks, policy, compile_count, seconds, peak_bytes (+ where it was measured), ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.checkpoint import atomic_directory, write_json_atomic
from rf_jax.memory import Policy, policy_to_dict
from rf_jax.parallel import placement
from rf_jax.parallel.distributed import barrier, is_leader
from rf_jax.runinfo import git_commit, peak_bytes
from rf_jax.sampling import Rollout, Sampler


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerateSpec:
  frames: int
  seed: int = 0
  batch: int = 1
  latent_hw: tuple[int, int] = (60, 104)


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
  if not np.issubdtype(arr.dtype, np.floating) or not np.all(np.isfinite(arr)):
    raise ValueError(f"--text-embeddings {path}: expected finite floating-point values, got {arr.dtype}")
  return np.ascontiguousarray(arr, np.float32)


class _LatentWriter:
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
    b, f = chunk.shape[:2]
    for i in range(b):
      at = self.offset + ((first_sample + i) * self.shape[1] + first_frame) * self.frame_bytes
      os.pwrite(self.fd, np.ascontiguousarray(chunk[i], np.float32).tobytes(), at)

  def close(self) -> None:
    os.fsync(self.fd)
    os.close(self.fd)


class _Progress:
  def __init__(self, total: int, enabled: bool):
    self.total, self.enabled, self.t0 = total, enabled, time.perf_counter()

  def update(self, done: int) -> None:
    if not self.enabled:
      return
    now = time.perf_counter()
    if done == 1:
      self.first = now
    elapsed = now - self.t0
    width = 30
    filled = int(width * done / self.total)
    rate = (f"{(now - self.first) / (done - 1) * 1e3:.1f} ms/chunk after compile" if done > 1
            else "(compiled)")
    sys.stderr.write(f"\r  chunk {done}/{self.total} [{'#' * filled}{'.' * (width - filled)}] "
                     f"{elapsed:.1f}s {rate}   ")
    if done == self.total:
      sys.stderr.write("\n")
    sys.stderr.flush()


@contextlib.contextmanager
def shared_directory(dest: str, *, force: bool = False):
  """`atomic_directory` for several processes writing one OUT (on a file system they share): process 0 makes
  OUT.partial, everyone writes into it, and process 0 renames it into place once all are done."""
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
  barrier("rf_jax.generate.open")
  yield tmp
  barrier("rf_jax.generate.written")
  if is_leader():
    if os.path.exists(dest):
      shutil.rmtree(dest)
    os.rename(tmp, dest)
  barrier("rf_jax.generate.renamed")


def generate(model, policy: Policy, sampler: Sampler, spec: GenerateSpec, out: str, *,
             text_embeddings: np.ndarray | None = None, force: bool = False, progress: bool = True,
             mesh: jax.sharding.Mesh | None = None, extra_summary: dict[str, Any] | None = None) -> dict[str, Any]:
  """Runs the rollout and writes OUT atomically; returns the summary.

  With a `mesh`, the rollout runs sharded on it (placement.py); with several processes each writes only its own
  samples' latents, and process 0 the JSON files.
  """
  cfg = model.config
  f = sampler.chunk_frames
  if spec.frames < 1:
    raise ValueError(f"--frames {spec.frames} must be positive")
  # The last chunk is generated whole; frames past --frames are dropped.
  generated = -(-spec.frames // f) * f
  rollout = Rollout(model, policy, sampler, batch=spec.batch, latent_hw=spec.latent_hw, frames=generated,
                    mesh=mesh)
  key = jax.random.key(spec.seed)
  noise_key, text_key = jax.random.split(key)
  if text_embeddings is None:  # a seeded random prompt: a preset runs out of the box
    context = np.asarray(jax.random.normal(text_key, (spec.batch, cfg.text_len, cfg.text_dim), jnp.float32))
    text_source = f"random (seed {spec.seed})"
  else:
    context = np.asarray(text_embeddings)
    text_source = "file"
  hl, wl = spec.latent_hw
  shape = (spec.batch, spec.frames, cfg.out_dim, hl, wl)
  chunks: list[dict[str, Any]] = []
  times: list[float] = []
  bar = _Progress(rollout.num_chunks, progress and is_leader())

  with shared_directory(out, force=force) as tmp:
    latents_path = os.path.join(tmp, "latents.npy")
    if is_leader():
      _LatentWriter.create(latents_path, shape)
    barrier("rf_jax.generate.latents")
    writer = _LatentWriter(latents_path, shape)
    t0 = time.perf_counter()

    def on_chunk(j, chunk_out):
      keep = min(f, spec.frames - j * f)
      for first, rows in placement.host_rows(chunk_out.latents):  # this process's samples
        writer.write(j * f, np.moveaxis(rows[:, :keep], -1, 2), first)  # [b, F, H, W, C] -> [b, F, C, H, W]
      chunks.append({"chunk": j, "frames": [j * f, j * f + f - 1],
                     **policy.describe(j, chunk_out.trace, chunk_out.calls)})
      times.append(time.perf_counter())
      bar.update(j + 1)

    rollout.run(context, key=noise_key, on_chunk=on_chunk)
    seconds = time.perf_counter() - t0
    writer.close()
    peak, peak_source = peak_bytes()
    intervals = np.diff(times) if len(times) > 1 else np.array([])
    summary = {
        "frames": spec.frames, "generated_frames": generated, "chunks": rollout.num_chunks, "chunk_frames": f,
        "batch": spec.batch,
        "latent_hw": list(spec.latent_hw), "seed": spec.seed, "text": text_source,
        "policy": policy_to_dict(policy), "sampler": {"timesteps": list(sampler.timesteps),
                                                      "context_noise": sampler.context_noise,
                                                      "shift": sampler.schedule.shift},
        "compile_count": rollout.compile_count, "seconds": round(seconds, 3),
        "first_chunk_seconds": round(times[0] - t0, 3),
        "steady_seconds_per_chunk": round(float(np.median(intervals)), 4) if intervals.size else None,
        "peak_bytes": peak, "peak_bytes_source": peak_source,
        "latents": {"file": "latents.npy", "shape": list(shape), "layout": "B F C H W", "dtype": "float32"},
        "model": cfg.to_dict(), "compute_dtype": str(jnp.dtype(model.dtype)),
        "attention": model.attention_backend().value,
        "mesh": None if mesh is None else placement.mesh_flag(placement.mesh_config(mesh)),
        "processes": jax.process_count(), "devices": jax.device_count(),
        "device": str(jax.devices()[0]), "jax": jax.__version__, "commit": git_commit(),
        **(extra_summary or {}),
    }
    if is_leader():
      write_json_atomic(os.path.join(tmp, "memory_trace.json"), {"policy": policy_to_dict(policy), "chunks": chunks})
      write_json_atomic(os.path.join(tmp, "summary.json"), summary)
  return summary
