"""Resume points of a killed `rf-jax generate` run (one process): what `generate --resume` needs to continue it to
the latents an uninterrupted run writes.

The run is assembled in `.OUT.partial` (`rf_jax.io.resumable_directory`); every `--save-every` chunks `save_progress`
writes there, under `.resume/`, the memory state (host arrays, `np.savez`) and `progress.json`: the batch group and
chunk reached, the traces and switches so far, and `run_identity`, a fingerprint of every setting that changes the
latents. `load_progress` refuses a resume with other settings, naming them; `replay` re-decodes the saved latents so
the mp4 files and motion statistics come out the same.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.io import check_unlocked, write_json_atomic
from rf_jax.memory import policy_to_dict
from rf_jax.metrics import FrameStats
from rf_jax.sampling import Rollout
from rf_jax.video import StreamDecoder

def check_partial(out: str, *, resume: bool, force: bool) -> None:
  """Before anything loads: --resume needs an unfinished run of OUT, and an unfinished run needs --resume (or
  --force to discard it)."""
  dest = os.path.abspath(out)
  check_unlocked(dest)
  partial = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.partial")
  if resume and not os.path.isdir(partial):
    raise ValueError(f"--resume: there is no unfinished run of {dest} to continue ({partial} does not exist)")
  if os.path.isdir(partial) and not resume and not force:
    raise FileExistsError(f"{dest}: an unfinished run is at {partial}; pass --resume to continue it, or --force to "
                          "discard it")


RESUME_DIR = ".resume"  # inside .OUT.partial: progress.json and the memory state of the last save


def run_identity(policy, sampler, spec, cfg, context, initial, schedule, recache, global_sink, dtype) -> dict:
  """What must be the same for a run to continue another's: every setting that changes the latents."""
  import hashlib
  digest = lambda a: None if a is None else hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]  # noqa: E731
  return {"policy": policy_to_dict(policy), "timesteps": list(sampler.timesteps), "shift": sampler.schedule.shift,
          "eta": sampler.eta, "context_noise": sampler.context_noise, "chunk_frames": sampler.chunk_frames,
          "spec": dataclasses.asdict(spec) | {"latent_hw": list(spec.latent_hw)}, "model": cfg.to_dict(),
          "compute_dtype": str(jnp.dtype(dtype)), "text": digest(context), "initial": digest(initial),
          "switches": [list(schedule.switch_frames), list(schedule.cuts)],
          "recache": None if recache is None else recache.value, "global_sink": bool(global_sink)}


def save_progress(folder: str, identity: dict, progress: dict, state) -> None:
  """A resume point: the memory state (host arrays; None at a group's start) first, under a name of its own, then
  progress.json naming it (replaced atomically), then the older state files go: a kill at any moment leaves a
  consistent pair."""
  d = os.path.join(folder, RESUME_DIR)
  os.makedirs(d, exist_ok=True)
  name, dtypes = None, None
  if state is not None:
    leaves = [np.asarray(a) for a in jax.tree.leaves(state)]
    dtypes = [str(a.dtype) for a in leaves]
    name = f"state-{progress['group']:04d}-{progress['chunk']:06d}.npz"
    tmp = os.path.join(d, f".{name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:  # exotic dtypes (bfloat16) travel as unsigned integers of their size
      np.savez(fh, **{f"a{i}": a.view(f"u{a.dtype.itemsize}") if a.dtype.kind == "V" or a.dtype.name == "bfloat16"
                      else a for i, a in enumerate(leaves)})
      fh.flush()
      os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(d, name))
  write_json_atomic(os.path.join(d, "progress.json"), {**progress, "identity": identity, "state": name,
                                                       "dtypes": dtypes})
  for old in os.listdir(d):
    if old.startswith("state-") and old != name:
      os.remove(os.path.join(d, old))


def load_progress(folder: str, identity: dict) -> dict:
  """The last resume point of the unfinished run in `folder`, refused (naming the settings) when it was started
  with other settings."""
  import json
  path = os.path.join(folder, RESUME_DIR, "progress.json")
  try:
    with open(path) as fh:
      saved = json.load(fh)
  except FileNotFoundError:
    saved = {"group": 0, "chunk": 0, "chunks": [], "switches": [], "state": None, "identity": identity}
  except json.JSONDecodeError as e:
    raise ValueError(f"--resume: {path} is damaged ({e}); pass --force to start over") from None
  differ = sorted(k for k in set(identity) | set(saved["identity"]) if identity.get(k) != saved["identity"].get(k))
  if differ:
    raise ValueError(f"--resume: the unfinished run was started with other settings ({', '.join(differ)} differ); "
                     "repeat its command with --resume, or pass --force to start over")
  return saved


def load_state(folder: str, saved: dict, rollout: Rollout):
  """The saved memory state, in the rollout's structure (host arrays; checked and placed by `Rollout.run`)."""
  like = jax.eval_shape(lambda: rollout.policy.init(rollout.geometry))
  with np.load(os.path.join(folder, RESUME_DIR, saved["state"])) as z:
    leaves = [z[f"a{i}"].view(jnp.dtype(dt)) for i, dt in enumerate(saved["dtypes"])]
  return jax.tree.unflatten(jax.tree.structure(like), leaves)


def clear_progress(folder: str) -> None:
  import shutil
  shutil.rmtree(os.path.join(folder, RESUME_DIR), ignore_errors=True)


def replay(decoder: StreamDecoder, stats: dict, latents_path: str, samples, *, chunks: int, chunk_frames: int,
           n0: int) -> None:
  """Feeds the decoder the latents already written of `samples` (their given frames, then `chunks` chunks), as the
  killed run did: the mp4 files and motion statistics come out the same."""
  lat = np.load(latents_path, mmap_mode="r")  # [N, T, C, H, W]
  f = chunk_frames
  for sample in samples:
    z = np.moveaxis(np.asarray(lat[sample], np.float32), 1, -1)  # [T, H, W, C]
    if n0:
      stats.setdefault(sample, FrameStats()).update(decoder.add(sample, 0, z[:n0]))
    for j in range(chunks):
      block = z[n0 + j * f:n0 + (j + 1) * f]
      if block.shape[0] < f:  # the last chunk's frames past --frames were dropped: pad (the decode is causal)
        block = np.concatenate([block, np.zeros((f - block.shape[0], *block.shape[1:]), block.dtype)])
      stats.setdefault(sample, FrameStats()).update(decoder.add(sample, j + (n0 > 0), block))
