"""`rf-jax generate`: whole videos from a model, a memory policy, prompts and a seed.

Outputs (written into a temporary folder beside OUT and renamed into place at the end, so a killed run leaves no
half-written OUT):
  video.mp4          H.264, 16 fps, when a VAE is given: decoded chunk by chunk during the rollout (one file per
                     sample: video_000.mp4, ... when there are several)
  latents.npy        float32 [N, frames, C, H, W] (the PyTorch pipeline's layout), streamed chunk by chunk
  memory_trace.json  per chunk: what the memory held, the RoPE positions, candidates/scores/choice, promotions
                     (of the first batch)
  summary.json       frames, chunks, policy, prompts, videos, compile_count, chunk_step_from (cache or compiled),
                     seconds, peak_bytes, ...

N samples run `batch` at a time through one compiled rollout. With prompts, every prompt's noise is the seed's
(sample k's video is the one `generate --prompt P_k --seed S` writes alone).
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

from rf_jax.io import atomic_directory, write_json_atomic
from rf_jax.memory import Policy, policy_to_dict
from rf_jax.parallel import placement
from rf_jax.parallel.distributed import barrier, is_leader
from rf_jax.runinfo import git_commit, peak_bytes
from rf_jax.sampling import Rollout, Sampler, text_rows


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerateSpec:
  frames: int
  seed: int = 0
  batch: int = 1
  latent_hw: tuple[int, int] = (60, 104)
  fps: int = 16
  video_scale: int = 1  # nearest-neighbour upscaling of the written frames


class _VideoDecoder:
  """Each sample's chunks -> its mp4, as they come: through the VAE's streaming decode (jitted: one compile for the
  first chunk, one for the rest; each sample keeps its own fixed-shape decoder history, so pixel frames exist only
  one chunk at a time), or as they are for a pixel-space model (vae None). Frames are scaled up `scale` times
  (nearest neighbour) for viewing. Per-frame motion and colour consistency are kept for motion.json / motion.png.
  """

  def __init__(self, vae, chunk_shape: tuple[int, ...], folder: str, names: list[str], frames: int, fps: int,
               scale: int = 1):
    from rf_jax.video import Mp4Writer
    self.vae = vae
    if vae is not None:
      from flax import nnx
      graphdef, state = nnx.split(vae)
      self._state = state
      self._decode = jax.jit(
          lambda st, z, hist, first: nnx.merge(graphdef, st).decode_stream(z, hist, first=first), static_argnums=3)
      self._zero = vae.init_stream((1, *chunk_shape[1:]))
      s, t = vae.config.spatial_stride, vae.config.temporal_stride
    else:
      s, t = 1, 1
      self._zero = None
    self.scale = scale
    self.height, self.width = chunk_shape[2] * s * scale, chunk_shape[3] * s * scale
    self.total = 1 + t * (frames - 1)  # pixel frames of `frames` latents
    self._writer = lambda name: Mp4Writer(os.path.join(folder, name), height=self.height, width=self.width, fps=fps)
    self.names = names
    self._open: dict[int, list] = {}  # sample -> [writer, history, frames written, previous frame, first histogram]
    self.stats: dict[int, dict[str, list[float]]] = {}

  def add(self, sample: int, chunk_index: int, z: np.ndarray) -> None:
    """z: this sample's latents of one chunk [F, h, w, C] (chunk_index 0 starts its video)."""
    from rf_jax.video import to_uint8
    if chunk_index == 0:
      self._open[sample] = [self._writer(self.names[sample]), self._zero, 0, None, None]
      self.stats[sample] = {"motion": [], "consistency": []}
    entry = self._open[sample]
    if self.vae is not None:
      pixels, entry[1] = self._decode(self._state, jnp.asarray(z[None]), entry[1], chunk_index == 0)
      pixels = np.asarray(pixels[0])
    else:
      pixels = np.asarray(z)
    keep = min(pixels.shape[0], self.total - entry[2])  # the last chunk may run past --frames
    if keep <= 0:
      return
    frames = to_uint8(pixels[:keep])
    self._measure(sample, entry, frames)
    if self.scale > 1:
      frames = np.repeat(np.repeat(frames, self.scale, axis=1), self.scale, axis=2)
    entry[0].write(frames)
    entry[2] += keep

  def _measure(self, sample: int, entry: list, frames: np.ndarray) -> None:
    """motion: mean |frame - previous| / 255; consistency: colour-histogram intersection with the first frame."""
    for frame in frames.astype(np.float32):
      hist = np.histogramdd(frame.reshape(-1, 3), bins=(4, 4, 4), range=((0, 256),) * 3)[0].ravel()
      hist /= hist.sum()
      if entry[4] is None:
        entry[4] = hist
      else:
        self.stats[sample]["motion"].append(float(np.abs(frame - entry[3]).mean() / 255))
        self.stats[sample]["consistency"].append(float(np.minimum(hist, entry[4]).sum()))
      entry[3] = frame

  def finish(self) -> None:
    for writer, *_ in self._open.values():
      writer.close()
    self._open.clear()

  def abort(self) -> None:
    for writer, *_ in self._open.values():
      writer.__exit__(RuntimeError, None, None)
    self._open.clear()


def motion_plot(stats: dict[int, dict[str, list[float]]], fps: int, path: str) -> None:
  """Per-frame motion and colour consistency of each sample over time."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(2, 1, figsize=(7, 4.5), dpi=100, sharex=True)
  for k, st in sorted(stats.items()):
    t = np.arange(1, len(st["motion"]) + 1) / fps
    axes[0].plot(t, st["motion"], lw=0.8, label=f"sample {k}")
    axes[1].plot(t, st["consistency"], lw=0.8)
  axes[0].set_ylabel("motion\n(mean |Δframe|)")
  axes[1].set_ylabel("colour consistency\nwith frame 0")
  axes[1].set_xlabel("seconds")
  axes[1].set_ylim(0, 1.02)
  for ax in axes:
    ax.grid(alpha=0.3)
  if len(stats) > 1:
    axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


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


def video_names(n: int) -> list[str]:
  return ["video.mp4"] if n == 1 else [f"video_{k:03d}.mp4" for k in range(n)]


def generate(model, policy: Policy, sampler: Sampler, spec: GenerateSpec, out: str, *,
             text_embeddings: np.ndarray | None = None, prompts: list[str] | None = None, vae=None,
             pixels: bool = False, force: bool = False, progress: bool = True, mesh: jax.sharding.Mesh | None = None,
             extra_summary: dict[str, Any] | None = None) -> dict[str, Any]:
  """Runs the rollouts and writes OUT atomically; returns the summary.

  text_embeddings: float32 [N, P, text_dim] (N samples; P <= text_len rows, zero-padded), or None for `batch`
    seeded random prompts. prompts: the N texts they came from (then each sample's noise is the seed's alone).
  vae: a `WanVAE` to decode the latents into mp4 files during the rollout (None: latents only).
  pixels: the model works in pixel space (the demo): its frames are written as they are (no VAE).
  With a `mesh`, the rollout runs sharded on it (placement.py); with several processes each writes only its own
  samples' latents and videos, and process 0 the JSON files.
  """
  cfg = model.config
  f = sampler.chunk_frames
  if spec.frames < 1:
    raise ValueError(f"--frames {spec.frames} must be positive")
  # The last chunk is generated whole; frames past --frames are dropped.
  generated = -(-spec.frames // f) * f
  key = jax.random.key(spec.seed)
  noise_key, text_key = jax.random.split(key)
  if text_embeddings is None:  # a seeded random prompt: a preset runs out of the box
    context = np.asarray(jax.random.normal(text_key, (spec.batch, cfg.text_len, cfg.text_dim), jnp.float32))
    text_source = f"random (seed {spec.seed})"
  else:
    context = np.asarray(text_embeddings)
    text_source = "prompts" if prompts else "file"
  # One compiled step for every batch of prompts: the prompt rows kept are the most any prompt needs.
  rollout = Rollout(model, policy, sampler, batch=spec.batch, latent_hw=spec.latent_hw, frames=generated,
                    mesh=mesh, text_rows=text_rows(context))
  n = context.shape[0]
  if prompts is None and n != spec.batch:
    raise ValueError(f"{n} text embeddings for --batch {spec.batch}")
  # With prompts every sample draws the seed's noise alone (sample_noise: one key per sample); otherwise one key
  # draws the whole batch's noise, as before prompts existed.
  keys = jnp.stack([noise_key] * spec.batch) if prompts else noise_key
  hl, wl = spec.latent_hw
  shape = (n, spec.frames, cfg.out_dim, hl, wl)
  video = vae is not None or pixels
  names = video_names(n) if video else []
  chunks: list[dict[str, Any]] = []
  times: list[float] = []
  groups = [(g, min(spec.batch, n - g)) for g in range(0, n, spec.batch)]
  bar = _Progress(rollout.num_chunks * len(groups), progress and is_leader())

  with shared_directory(out, force=force) as tmp:
    latents_path = os.path.join(tmp, "latents.npy")
    if is_leader():
      _LatentWriter.create(latents_path, shape)
    barrier("rf_jax.generate.latents")
    writer = _LatentWriter(latents_path, shape)
    decoder = (_VideoDecoder(vae, rollout.chunk_shape, tmp, names, spec.frames, spec.fps, spec.video_scale)
               if video else None)
    t0 = time.perf_counter()
    try:
      for gi, (start, count) in enumerate(groups):
        rows = [min(start + i, n - 1) for i in range(spec.batch)]  # the last group is padded by repeats

        def on_chunk(j, chunk_out, gi=gi, start=start, count=count):
          keep = min(f, spec.frames - j * f)
          for first, block in placement.host_rows(chunk_out.latents):  # this process's samples
            real = max(0, min(block.shape[0], count - first))
            if real == 0:
              continue
            writer.write(j * f, np.moveaxis(block[:real, :keep], -1, 2), start + first)  # -> [b, F, C, H, W]
            if decoder is not None:
              for i in range(real):
                decoder.add(start + first + i, j, block[i])
          if gi == 0:
            chunks.append({"chunk": j, "frames": [j * f, j * f + f - 1],
                           **policy.describe(j, chunk_out.trace, chunk_out.calls)})
          times.append(time.perf_counter())
          bar.update(gi * rollout.num_chunks + j + 1)

        rollout.run(context[rows], key=keys, on_chunk=on_chunk)
        if decoder is not None:
          decoder.finish()
    except BaseException:
      if decoder is not None:
        decoder.abort()
      raise
    seconds = time.perf_counter() - t0
    writer.close()
    peak, peak_source = peak_bytes()
    intervals = np.diff(times[:rollout.num_chunks]) if len(times) > 1 else np.array([])
    video_info = None
    if decoder is not None:
      video_info = {"files": names, "frames": decoder.total, "height": decoder.height, "width": decoder.width,
                    "fps": spec.fps, "codec": "h264", "seconds": round(decoder.total / spec.fps, 2),
                    "motion": {str(k): round(float(np.mean(v["motion"])), 5) if v["motion"] else None
                               for k, v in decoder.stats.items()},
                    "consistency_end": {str(k): round(float(np.mean(v["consistency"][-spec.fps:])), 4)
                                        if v["consistency"] else None for k, v in decoder.stats.items()}}
    summary = {
        "frames": spec.frames, "generated_frames": generated, "chunks": rollout.num_chunks, "chunk_frames": f,
        "batch": spec.batch, "samples": n,
        "latent_hw": list(spec.latent_hw), "seed": spec.seed, "text": text_source,
        "prompts": list(prompts) if prompts else None, "video": video_info,
        "policy": policy_to_dict(policy), "sampler": {"timesteps": list(sampler.timesteps),
                                                      "context_noise": sampler.context_noise,
                                                      "shift": sampler.schedule.shift, "eta": sampler.eta},
        "compile_count": rollout.compile_count, "chunk_step_from": rollout.step_compile,
        "compile_cache": jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None,
        "seconds": round(seconds, 3),
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
    if decoder is not None and decoder.stats and jax.process_count() == 1:
      write_json_atomic(os.path.join(tmp, "motion.json"), {"fps": spec.fps, "samples": {
          str(k): v for k, v in sorted(decoder.stats.items())}})
      motion_plot(decoder.stats, spec.fps, os.path.join(tmp, "motion.png"))
  return summary
