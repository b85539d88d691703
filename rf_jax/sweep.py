"""`rf-jax sweep CONFIG.py --out DIR`: a grid of memory configurations x prompts x seeds, resumable.

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

import csv
import dataclasses
import io
import itertools
import json
import os
import sys
import time
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.io import write_json_atomic
from rf_jax.memory import Policy, policy_to_dict
from rf_jax.metrics import NAMES as METRICS, video_metrics
from rf_jax.parallel import placement
from rf_jax.parallel.distributed import barrier, is_leader
from rf_jax.runinfo import git_commit
from rf_jax.sampling import Rollout, Sampler, text_rows

FORMAT = "rf_jax.sweep/1"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sweep:
  """A sweep's grid and run settings.

  policies: the memory configurations (`grid` expands settings).
  prompts: text (encoded by the model's umT5 once, then read from the text cache: $RF_JAX_CACHE/text or
    ~/.cache/rf_jax/text), "random:K" (the seeded random embedding `generate --seed K` uses), or a .npy of text
    embeddings [P, text_dim] (P <= text_len), relative to the sweep file.
  seeds: noise seeds; every prompt runs with every seed.
  model: a preset name (random weights from `weights_seed`; "tiny" has a random text encoder too), an rf_jax DiT
    checkpoint folder, or a pipeline folder (a Wan folder converted by `rf-jax convert`, needed for text prompts).
  batch: samples per compiled run (a multiple of the mesh's data x fsdp); default: data x fsdp.
  """
  policies: tuple[Policy, ...]
  prompts: tuple[str, ...] = ("random:0",)
  seeds: tuple[int, ...] = (0,)
  model: str = "tiny"
  weights_seed: int = 0
  frames: int = 21
  latent_hw: tuple[int, int] | None = None  # default (8, 8) for the tiny preset, else (60, 104)
  sampler: Sampler = Sampler.from_steps()
  batch: int | None = None
  compute_dtype: str = "float32"
  attention: str = "auto"
  source_dir: str = "."  # where relative prompt files are found (set to the sweep file's folder)

  def __post_init__(self):
    object.__setattr__(self, "policies", tuple(self.policies))
    object.__setattr__(self, "prompts", tuple(self.prompts))
    object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
    if not self.policies:
      raise ValueError("Sweep.policies is empty")
    for i, p in enumerate(self.policies):
      if not isinstance(p, Policy):
        raise ValueError(f"Sweep.policies[{i}] is {type(p).__name__}, not a memory policy")
    if not self.prompts or not self.seeds:
      raise ValueError("Sweep.prompts and Sweep.seeds must not be empty")
    if self.frames < 2:
      raise ValueError(f"Sweep.frames={self.frames}: metrics need at least 2 frames")
    if self.compute_dtype not in ("float32", "bfloat16"):
      raise ValueError(f"Sweep.compute_dtype={self.compute_dtype!r}; expected float32 or bfloat16")

  @property
  def samples(self) -> list[tuple[str, int]]:
    return [(p, s) for p in self.prompts for s in self.seeds]

  def manifest(self) -> dict[str, Any]:
    """What identifies the sweep's results (a restart must match it)."""
    return {"format": FORMAT, "configs": [policy_to_dict(p) for p in self.policies],
            "prompts": list(self.prompts), "seeds": list(self.seeds), "model": self.model,
            "weights_seed": self.weights_seed, "frames": self.frames,
            "latent_hw": None if self.latent_hw is None else list(self.latent_hw),
            "sampler": {"timesteps": list(self.sampler.timesteps), "context_noise": self.sampler.context_noise,
                        "chunk_frames": self.sampler.chunk_frames, "shift": self.sampler.schedule.shift,
                        **({"eta": self.sampler.eta} if self.sampler.eta != 1.0 else {})},
            "batch": self.batch, "compute_dtype": self.compute_dtype}


def grid(policy: Policy, **settings: Iterable) -> tuple[Policy, ...]:
  """Every combination of the settings: grid(RelaxPolicy(), lam=[0, 1, 2]) -> three policies."""
  names = list(settings)
  for n in names:
    if n not in {f.name for f in dataclasses.fields(policy)}:
      raise ValueError(f"grid: {type(policy).__name__} has no setting {n!r}")
  return tuple(dataclasses.replace(policy, **dict(zip(names, values)))
               for values in itertools.product(*(list(settings[n]) for n in names)))


def load_sweep(path: str) -> Sweep:
  """Runs the sweep file and returns its `SWEEP`."""
  from rf_jax.config import load_python_value
  sweep = load_python_value(path, "SWEEP", Sweep, what="sweep file", expected="SWEEP = rf_jax.sweep.Sweep(...)")
  return dataclasses.replace(sweep, source_dir=os.path.dirname(os.path.abspath(path)))


def label(policy: Policy) -> str:
  """A short name: the policy, the settings that differ from its defaults, and its traced scalars."""
  default = type(policy)()
  changed = [f"{f.name}={getattr(policy, f.name)}" for f in dataclasses.fields(policy)
             if getattr(policy, f.name) != getattr(default, f.name) or f.metadata.get("traced")]
  return " ".join([policy.name, *changed])


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
    text_key = jax.random.split(jax.random.key(k))[1]  # as `generate --seed K` draws its random prompt
    return np.asarray(jax.random.normal(text_key, (1, text_len, text_dim), jnp.float32))[0]
  from rf_jax.generate import load_text_embeddings
  path = prompt if os.path.isabs(prompt) else os.path.join(source_dir, prompt)
  arr = load_text_embeddings(path, 1, text_len, text_dim)[0]
  return np.pad(arr, ((0, text_len - arr.shape[0]), (0, 0)))


def _embeddings(sweep: Sweep, config) -> dict[str, np.ndarray]:
  """Every prompt's [text_len, text_dim] embedding; text prompts through the pipeline's umT5 and the text cache."""
  out = {p: prompt_embedding(p, config.text_len, config.text_dim, sweep.source_dir)
         for p in sweep.prompts if not is_text_prompt(p)}
  texts = [p for p in sweep.prompts if is_text_prompt(p)]
  if texts:
    from rf_jax import pipeline
    from rf_jax.text.encode import default_cache_dir, pad_embeddings
    path = _model_path(sweep)
    sources = pipeline.resolve_sources(path, None if path else sweep.model)
    encoder = pipeline.prompt_encoder(sources, config, seed=sweep.weights_seed, cache_dir=default_cache_dir())
    out.update(zip(texts, pad_embeddings(encoder(texts), config.text_len)))
  return out


def sample_keys(seeds: Sequence[int]) -> jax.Array:
  """The noise key of each seed, as `generate --seed S` derives it."""
  return jnp.stack([jax.random.split(jax.random.key(s))[0] for s in seeds])


# ------------------------------------------------------------------------------------------------ the store


class Store:
  """The zarr v3 arrays of a sweep, through tensorstore."""

  def __init__(self, root: str, configs: int, samples: int, frames: int, latent_chw: tuple[int, int, int]):
    import tensorstore as ts
    self.root = root

    def array(name, shape, chunk):
      spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(root, name)},
              "metadata": {"shape": list(shape), "data_type": "float32", "fill_value": "NaN",
                           "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunk)}},
                           "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                      {"name": "zstd", "configuration": {"level": 3, "checksum": False}}]}}
      return ts.open(spec, create=True, open=True).result()

    self.latents = array("latents", (configs, samples, frames, *latent_chw), (1, 1, frames, *latent_chw))
    self.metrics = {m: array(f"metrics/{m}", (configs, samples), (1, 1)) for m in METRICS}

  def write(self, config: int, first_sample: int, latents: np.ndarray, metrics: dict[str, np.ndarray]) -> None:
    """Rows of one configuration: latents [n, frames, C, H, W], metrics {name: [n]}; returns when on disk."""
    n = latents.shape[0]
    futures = [self.latents[config, first_sample:first_sample + n].write(latents)]
    futures += [self.metrics[m][config, first_sample:first_sample + n].write(metrics[m]) for m in METRICS]
    for f in futures:
      f.result()

  def read_metrics(self) -> dict[str, np.ndarray]:
    return {m: self.metrics[m].read().result() for m in METRICS}


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
  n = len(sweep.samples)
  return [Unit(c, i, i * batch, min(batch, n - i * batch))
          for c in range(len(sweep.policies)) for i in range(-(-n // batch))]


def layouts(sweep: Sweep) -> dict[Policy, list[int]]:
  """Compiled layout (the policy with traced scalars blanked) -> the configurations that share it."""
  out: dict[Policy, list[int]] = {}
  for i, p in enumerate(sweep.policies):
    out.setdefault(p.static_part(), []).append(i)
  return out


def _model_path(sweep: Sweep) -> str | None:
  """The checkpoint or pipeline folder of Sweep.model, or None for a preset."""
  from rf_jax.config import PRESETS
  if sweep.model in PRESETS:
    return None
  path = sweep.model if os.path.isabs(sweep.model) else os.path.join(sweep.source_dir, sweep.model)
  if not os.path.isdir(path):
    raise ValueError(f"Sweep.model {sweep.model!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a "
                     "checkpoint folder (convert weights with `rf-jax convert`)")
  return path


def _model_config(sweep: Sweep):
  from rf_jax import checkpoint, pipeline
  from rf_jax.cli import resolve_config
  path = _model_path(sweep)
  if path is None:
    return resolve_config(sweep.model)
  return checkpoint.load_config(pipeline.resolve_sources(path, None).dit, "dit")


def _build_model(sweep: Sweep, mesh):
  from flax import nnx
  from rf_jax import checkpoint, pipeline
  from rf_jax.cli import param_shardings, resolve_config
  from rf_jax.model import CausalWanDiT
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[sweep.compute_dtype]
  path = _model_path(sweep)
  if path is None:
    return CausalWanDiT(resolve_config(sweep.model), dtype=dtype, attn_impl=sweep.attention,
                        rngs=nnx.Rngs(sweep.weights_seed))
  return checkpoint.load_model(pipeline.resolve_sources(path, None).dit, dtype=dtype, attn_impl=sweep.attention,
                               shardings=None if mesh is None else param_shardings(mesh))


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
  """Runs (or resumes) the sweep into `out`; returns {"units", "ran", "skipped", "compiles", "seconds"}."""
  t0 = time.perf_counter()
  parts = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
  batch = sweep.batch or parts
  if batch % parts:
    raise ValueError(f"Sweep.batch={batch} does not divide over the mesh's data x fsdp = {parts} devices")
  sweep = dataclasses.replace(sweep, batch=batch)
  # Inputs first (a bad prompt fails before anything is compiled or written), and the text encoder is dropped
  # before the DiT is loaded.
  embeddings = _embeddings(sweep, _model_config(sweep))
  model = _build_model(sweep, mesh)
  cfg = model.config
  latent_hw = sweep.latent_hw or ((8, 8) if sweep.model == "tiny" else (60, 104))
  f = sweep.sampler.chunk_frames
  generated = -(-sweep.frames // f) * f
  samples = sweep.samples

  os.makedirs(os.path.join(out, "done"), exist_ok=True)
  _check_manifest(out, sweep.manifest())
  barrier("rf_jax.sweep.manifest")
  store = Store(os.path.join(out, "store.zarr"), len(sweep.policies), len(samples), sweep.frames,
                (cfg.out_dim, *latent_hw))
  units = plan(sweep, batch)
  todo = [u for u in units if not os.path.exists(os.path.join(out, "done", u.marker))]
  by_layout = layouts(sweep)
  rollouts: dict[Policy, Rollout] = {}
  prompt_rows = max(text_rows(e[None]) for e in embeddings.values())  # one compiled step for every prompt
  bar = _bar(len(units), len(units) - len(todo), progress and is_leader())
  for layout, configs in by_layout.items():
    for unit in (u for u in todo if u.config in configs):
      policy = sweep.policies[unit.config]
      if layout not in rollouts:
        rollouts[layout] = Rollout(model, policy, sweep.sampler, batch=batch, latent_hw=latent_hw,
                                   frames=generated, mesh=mesh, text_rows=prompt_rows)
      rollout = rollouts[layout]
      rows = [samples[min(unit.first + i, unit.first + unit.count - 1)] for i in range(batch)]  # padded
      context = np.stack([embeddings[p] for p, _ in rows])
      keys = sample_keys([s for _, s in rows])
      pieces: dict[int, list[np.ndarray]] = {}

      def on_chunk(j, chunk_out):
        for first, block in placement.host_rows(chunk_out.latents):  # this process's samples only
          pieces.setdefault(first, []).append(block)

      rollout.run(context, key=keys, params=policy.params(), on_chunk=on_chunk)
      for first, blocks in pieces.items():
        video = np.concatenate(blocks, axis=1)[:, :sweep.frames]  # [n, frames, Hl, Wl, C]
        real = max(0, min(video.shape[0], unit.count - first))
        if real == 0:
          continue
        metrics = {k: np.asarray(v)[:real] for k, v in video_metrics(video[:real]).items()}
        store.write(unit.config, unit.first + first, np.moveaxis(video[:real], -1, 2), metrics)
      barrier(f"rf_jax.sweep.{unit.marker}")
      if is_leader():
        write_json_atomic(os.path.join(out, "done", unit.marker),
                          {"config": unit.config, "samples": [unit.first, unit.first + unit.count]})
      bar.update(1, label(policy))
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
    _append_jsonl(os.path.join(out, "runs.jsonl"), {
        **result, "mesh": None if mesh is None else placement.mesh_flag(placement.mesh_config(mesh)),
        "processes": jax.process_count(), "device": str(jax.devices()[0]), "jax": jax.__version__,
        "commit": git_commit()})
  return result


class _bar:
  def __init__(self, total: int, done: int, enabled: bool):
    self.tqdm = None
    if enabled:
      from tqdm import tqdm
      self.tqdm = tqdm(total=total, initial=done, unit="run", desc="sweep", file=sys.stderr, dynamic_ncols=True)

  def update(self, n: int, what: str) -> None:
    if self.tqdm is not None:
      self.tqdm.set_postfix_str(what, refresh=False)
      self.tqdm.update(n)

  def close(self) -> None:
    if self.tqdm is not None:
      self.tqdm.close()


def _append_jsonl(path: str, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record, sort_keys=True) + "\n")


def _replace_bytes(path: str, data: bytes) -> None:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "wb") as fh:
    fh.write(data)
  os.replace(tmp, path)


def write_results(out: str, sweep: Sweep, store: Store, finished: Sequence[Unit]) -> None:
  """results.csv and summary.png from the finished units (each replaced atomically)."""
  metrics = store.read_metrics()
  samples = sweep.samples
  rows = []
  for u in sorted(finished, key=lambda u: (u.config, u.first)):
    for s in range(u.first, u.first + u.count):
      prompt, seed = samples[s]
      rows.append({"config": u.config, "label": label(sweep.policies[u.config]),
                   "policy": json.dumps(policy_to_dict(sweep.policies[u.config]), sort_keys=True),
                   "sample": s, "prompt": prompt, "seed": seed,
                   **{m: repr(float(metrics[m][u.config, s])) for m in METRICS}})
  buf = io.StringIO()
  writer = csv.DictWriter(buf, fieldnames=["config", "label", "policy", "sample", "prompt", "seed", *METRICS],
                          lineterminator="\n")
  writer.writeheader()
  writer.writerows(rows)
  _replace_bytes(os.path.join(out, "results.csv"), buf.getvalue().encode())
  _replace_bytes(os.path.join(out, "summary.png"), summary_plot(sweep, rows))


def summary_plot(sweep: Sweep, rows: list[dict]) -> bytes:
  """A PNG: one panel per metric, each configuration's samples (dots) and mean (bar)."""
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  labels = [label(p) for p in sweep.policies]
  fig, axes = plt.subplots(2, 3, figsize=(15, 7.5), constrained_layout=True)
  for ax, m in zip(axes.ravel(), METRICS):
    for c in range(len(labels)):
      vals = [float(r[m]) for r in rows if r["config"] == c]
      if vals:
        ax.bar(c, np.mean(vals), color="C0", alpha=0.35)
        ax.plot([c] * len(vals), vals, "o", color="C0", markersize=3)
    ax.set_title(m.replace("_", " "))
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
  fig.suptitle(f"{len(rows)} runs, {len(labels)} configurations x {len(sweep.samples)} samples "
               f"({sweep.frames} frames, model {sweep.model})")
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=80, metadata={"Software": None})
  plt.close(fig)
  return buf.getvalue()
