"""Running a sweep (`rf-jax sweep CONFIG.py --out DIR`): a grid of memory configurations x prompts x seeds,
resumable. The grid is `rf_jax.sweep.config.Sweep`, the arrays `store.Store`, the CSV and plot `report`.

A sweep file is Python that defines `SWEEP = Sweep(...)` (see configs/sweeps/). The grid is
    configurations (memory policies with their settings)  x  samples (prompts x seeds).
Configurations whose policies differ only in traced scalars (Relax's lambda, Slow-Fast's threshold) share one
compiled rollout; samples run `batch` at a time, split over the mesh's data axes. Each sample's noise comes from its
own seed exactly as `rf-jax generate --seed S --batch 1` draws it, so a sample's result does not depend on what it
was batched with.

DIR after a sweep:
    sweep.json          the grid (what a restart checks it is resuming)
    store.zarr/         zarr v3 (tensorstore): latents [R, S, frames, C, H, W] float32, one chunk per run;
                        metrics/<name> [R, S] float32 (rf_jax.metrics); NaN until written
    done/               one marker per finished unit (configuration, batch), written after its data
    results.csv         one row per finished run: configuration, settings, prompt, seed, metrics
    summary.png         each metric per configuration (every sample and the mean)
    runs.jsonl          per invocation: device, versions, commit, compiles per layout, seconds (not compared)

Killed at any moment and restarted, a sweep skips units with a marker and recomputes the others (they are
deterministic), so it ends with the same store as an uninterrupted run; results.csv and summary.png are rewritten
atomically from finished units only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import numpy as np

from rf_jax import pipeline
from rf_jax.config import PRESETS
from rf_jax.io import append_jsonl, load_latents, single_writer, write_json_atomic
from rf_jax.memory import Policy
from rf_jax.metrics import video_metrics
from rf_jax.parallel import placement
from rf_jax.parallel.distributed import barrier, is_leader
from rf_jax.progress import progress_bar
from rf_jax.runinfo import run_info
from rf_jax.sampling import Rollout, noise_keys, random_text, text_rows
from rf_jax.sampling.rollout import initial_blocks
from rf_jax.text.encode import default_cache_dir, load_text_embeddings, pad_embeddings
from rf_jax.sweep.config import Sweep, label, schedule
from rf_jax.sweep.report import write_results
from rf_jax.sweep.store import Store

# ------------------------------------------------------------------------------------------------ inputs


def is_text_prompt(prompt: str) -> bool:
  return not prompt.startswith("random:") and not prompt.endswith(".npy")


def prompt_embedding(prompt: str, text_len: int, text_dim: int, source_dir: str) -> np.ndarray:
  """A random:K or .npy prompt as float32 [text_len, text_dim] (zero-padded rows, as the model pads them)."""
  if prompt.startswith("random:"):
    try:
      k = int(prompt.split(":", 1)[1])
    except ValueError:
      raise ValueError(f"prompt {prompt!r}: expected random:INTEGER") from None
    return random_text(k, 1, text_len, text_dim)[0]  # as `generate --seed K` draws its random prompt
  path = prompt if os.path.isabs(prompt) else os.path.join(source_dir, prompt)
  arr = load_text_embeddings(path, 1, text_len, text_dim)[0]
  return np.pad(arr, ((0, text_len - arr.shape[0]), (0, 0)))


def _embeddings(sweep: Sweep, config) -> dict[str, np.ndarray]:
  """Every prompt's [text_len, text_dim] embedding (the samples' and the switches'); text prompts through the
  pipeline's umT5 and the text cache."""
  prompts = list(dict.fromkeys([*sweep.prompts, *(e[1] for sw in sweep.switches for e in sw)]))
  out = {p: prompt_embedding(p, config.text_len, config.text_dim, sweep.source_dir)
         for p in prompts if not is_text_prompt(p)}
  texts = [p for p in prompts if is_text_prompt(p)]
  if texts:
    path = _model_path(sweep)
    sources = pipeline.resolve_sources(path, None if path else sweep.model)
    encoder = pipeline.prompt_encoder(sources, config, seed=sweep.weights_seed, cache_dir=default_cache_dir())
    out.update(zip(texts, pad_embeddings(encoder(texts), config.text_len)))
  return out


# ------------------------------------------------------------------------------------------------ running


@dataclasses.dataclass(frozen=True)
class Unit:
  config: int
  batch_index: int
  first: int  # first sample
  count: int  # real samples (the last batch is padded with repeats of its last sample)

  @property
  def marker(self) -> str:
    return f"c{self.config:04d}-b{self.batch_index:05d}.json"


def plan(sweep: Sweep, batch: int) -> list[Unit]:
  """Units of `batch` samples; a unit never spans two conditions (they differ in schedule or initial frames)."""
  group = len(sweep.prompts) * len(sweep.seeds)
  starts = [g * group + i * batch for g in range(len(sweep.conditions)) for i in range(-(-group // batch))]
  return [Unit(c, k, first, min(batch, group - (first % group)))
          for c in range(len(sweep.policies)) for k, first in enumerate(starts)]


def _initial(sweep: Sweep, config, latent_hw) -> dict[str, np.ndarray]:
  """Every initial input's latents [1, n, Hl, Wl, C]; all must have the same n (the compiled layout)."""
  out = {}
  for name in (x for x in sweep.initial if x is not None):
    path = name if os.path.isabs(name) else os.path.join(sweep.source_dir, name)
    out[name] = load_latents(path, in_dim=config.in_dim, latent_hw=latent_hw, what="Sweep.initial")
  counts = {k: v.shape[1] for k, v in out.items()}
  if len(set(counts.values())) > 1 or (out and None in sweep.initial):
    raise ValueError(f"Sweep.initial: every entry needs the same number of initial frames (got {counts}"
                     f"{', and None' if None in sweep.initial and out else ''})")
  return out


def layouts(sweep: Sweep) -> dict[Policy, list[int]]:
  """Compiled layout (the policy with traced scalars blanked) -> the configurations that share it."""
  out: dict[Policy, list[int]] = {}
  for i, p in enumerate(sweep.policies):
    out.setdefault(p.static_part(), []).append(i)
  return out


def _model_path(sweep: Sweep) -> str | None:
  """The checkpoint or pipeline folder of Sweep.model, or None for a preset."""
  if sweep.model in PRESETS:
    return None
  path = sweep.model if os.path.isabs(sweep.model) else os.path.join(sweep.source_dir, sweep.model)
  if not os.path.isdir(path):
    raise ValueError(f"Sweep.model {sweep.model!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a "
                     "checkpoint folder (convert weights with `rf-jax convert`)")
  return path


def dit_source(sweep: Sweep) -> pipeline.DiTSource:
  path = _model_path(sweep)
  if path is None:
    return pipeline.DiTSource.of_preset(sweep.model, sweep.weights_seed)
  return pipeline.DiTSource.checkpoint(path)


def _check_manifest(out: str, manifest: dict) -> None:
  path = os.path.join(out, "sweep.json")
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    if stored != json.loads(json.dumps(manifest)):
      diff = sorted(k for k in set(stored) | set(manifest) if stored.get(k) != json.loads(json.dumps(manifest.get(k))))
      raise ValueError(f"{out} holds a different sweep (differs in {', '.join(diff)}); use a new --out")
  elif is_leader():
    write_json_atomic(path, manifest)


def run_sweep(sweep: Sweep, out: str, *, mesh=None, progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) the sweep into `out`; returns {"units", "ran", "skipped", "compiles", "seconds"}. A second
  run on the same `out` while this one runs stops at once."""
  with single_writer(out):
    return _run_sweep(sweep, out, mesh=mesh, progress=progress)


def _run_sweep(sweep: Sweep, out: str, *, mesh=None, progress: bool = True) -> dict[str, Any]:
  t0 = time.perf_counter()
  parts = placement.batch_parts(mesh)
  batch = sweep.batch or parts
  if batch % parts:
    raise ValueError(f"Sweep.batch={batch} does not divide over the mesh's data x fsdp = {parts} devices")
  sweep = dataclasses.replace(sweep, batch=batch)
  # Inputs first (a bad prompt fails before anything is compiled or written), and the text encoder is dropped
  # before the DiT is loaded.
  source = dit_source(sweep)
  latent_hw = sweep.latent_hw or source.default_latent_hw()
  initial = _initial(sweep, source.config(), latent_hw)
  n0 = next(iter(initial.values())).shape[1] if initial else 0
  initial_blocks(n0, sweep.sampler.chunk_frames)  # a count the sampler cannot take is named now
  embeddings = _embeddings(sweep, source.config())
  model = pipeline.load_dit(source, dtype=sweep.compute_dtype, attn_impl=sweep.attention, mesh=mesh)
  cfg = model.config
  generated = sweep.sampler.whole_chunks(sweep.frames)
  samples = sweep.samples

  os.makedirs(os.path.join(out, "done"), exist_ok=True)
  _check_manifest(out, sweep.manifest())
  barrier("rf_jax.sweep.manifest")
  store = Store(os.path.join(out, "store.zarr"), len(sweep.policies), len(samples), n0 + sweep.frames,
                (cfg.out_dim, *latent_hw))
  units = plan(sweep, batch)
  todo = [u for u in units if not os.path.exists(os.path.join(out, "done", u.marker))]
  by_layout = layouts(sweep)
  rollouts: dict[Policy, Rollout] = {}
  prompt_rows = max(text_rows(e[None]) for e in embeddings.values())  # one compiled step for every prompt
  bar = progress_bar(len(units), desc="sweep", unit="run", enabled=progress and is_leader(),
                     initial=len(units) - len(todo))
  for layout, configs in by_layout.items():
    for unit in (u for u in todo if u.config in configs):
      policy = sweep.policies[unit.config]
      if layout not in rollouts:
        rollouts[layout] = Rollout(model, policy, sweep.sampler, batch=batch, latent_hw=latent_hw,
                                   frames=generated, mesh=mesh, text_rows=prompt_rows, initial_frames=n0,
                                   recache=sweep.recache, global_sink=sweep.global_sink)
      rollout = rollouts[layout]
      rows = [samples[min(unit.first + i, unit.first + unit.count - 1)] for i in range(batch)]  # padded
      switches, init_name = sweep.condition_of(unit.first)
      context = np.stack([embeddings[p] for p, _ in rows])  # [B, P, D]
      if switches:  # [K, B, P, D]: the sample's prompt, then each switch's
        context = np.stack([context, *(np.stack([embeddings[e[1]]] * batch) for e in switches)])
      given = None if init_name is None else np.repeat(initial[init_name], batch, axis=0)
      keys = noise_keys([s for _, s in rows])
      pieces: dict[int, list[np.ndarray]] = {}

      def on_chunk(j, chunk_out):
        for first, block in placement.host_rows(chunk_out.latents):  # this process's samples only
          pieces.setdefault(first, []).append(block)

      rollout.run(context, key=keys, params=policy.params(), on_chunk=on_chunk, initial=given,
                  schedule=schedule(switches))
      for first, blocks in pieces.items():
        head = [] if given is None else [given[first:first + blocks[0].shape[0]]]
        video = np.concatenate(head + blocks, axis=1)[:, :n0 + sweep.frames]  # [n, n0 + frames, Hl, Wl, C]
        real = max(0, min(video.shape[0], unit.count - first))
        if real == 0:
          continue
        metrics = {k: np.asarray(v)[:real] for k, v in video_metrics(video[:real]).items()}
        store.write(unit.config, unit.first + first, np.moveaxis(video[:real], -1, 2), metrics)
      barrier(f"rf_jax.sweep.{unit.marker}")
      if is_leader():
        write_json_atomic(os.path.join(out, "done", unit.marker),
                          {"config": unit.config, "samples": [unit.first, unit.first + unit.count]})
      bar.set_postfix_str(label(policy), refresh=False)
      bar.update(1)
  bar.close()
  barrier("rf_jax.sweep.end")
  compiles = {label(sweep.policies[by_layout[k][0]]): r.compile_count for k, r in rollouts.items()}
  compiled_from = {label(sweep.policies[by_layout[k][0]]): r.step_compile for k, r in rollouts.items()}
  result = {"units": len(units), "ran": len(todo), "skipped": len(units) - len(todo), "compiles": compiles,
            "compiled_from": compiled_from,
            "layouts": len(by_layout), "seconds": round(time.perf_counter() - t0, 3)}
  if is_leader():
    finished = [u for u in units if os.path.exists(os.path.join(out, "done", u.marker))]
    write_results(out, sweep, store, finished)
    append_jsonl(os.path.join(out, "runs.jsonl"), {**result, **run_info(mesh)})
  return result
