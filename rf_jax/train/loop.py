"""`rf-jax train CONFIG --out DIR`: the training loop, resumable.

DIR:
    train.json       the config (a restart with another config is refused)
    checkpoints/N/   orbax CheckpointManager steps (params, AdamW state, EMA, step), every save_every steps and at the
                     end, written asynchronously; the last `keep` are kept
    metrics.jsonl    one line per log_every steps: step, loss, grad_norm, lr, steps/s, clips/s, seconds
    loss.png         the loss curve (rewritten at each save and at the end)
    model/           at the end: the EMA weights as an rf_jax DiT checkpoint (`rf-jax generate --checkpoint`)

Killed at any moment and restarted, training resumes from the last finished checkpoint and, because a step's data
(`batch_indices`) and noise (`step_key`) depend on the step alone, reproduces the uninterrupted run's parameters
exactly; metrics.jsonl is cut back to the resumed step, so it also reads as one run.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np

from rf_jax.io import single_writer, write_json_atomic
from rf_jax.parallel import placement
from rf_jax.parallel.distributed import is_leader
from rf_jax.progress import progress_bar
from rf_jax.runinfo import git_commit
from rf_jax.train.config import TrainConfig
from rf_jax.train.step import _graphdef, abstract_state, init_state, step_key, train_batch, train_step_fn


def _manager(out: str, cfg: TrainConfig):
  import orbax.checkpoint as ocp
  options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep, save_interval_steps=cfg.save_every,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(out), "checkpoints"), options=options)


def _check_config(out: str, cfg: TrainConfig) -> None:
  path = os.path.join(out, "train.json")
  want = json.loads(json.dumps(cfg.to_dict()))
  if os.path.exists(path):
    with open(path) as f:
      stored = json.load(f)
    if stored != want:
      diff = sorted(k for k in set(stored) | set(want) if stored.get(k) != want.get(k))
      raise ValueError(f"{out} holds a training run with another config (differs in {', '.join(diff)}); use a new "
                       "--out")
  elif is_leader():
    write_json_atomic(path, want)


def _cut_metrics(path: str, step: int) -> None:
  """Drops metric lines past `step` (written after the last checkpoint by a killed run)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [ln for ln in f if ln.strip()]
  kept = []
  for ln in lines:
    try:
      if json.loads(ln)["step"] <= step:
        kept.append(ln)
    except (json.JSONDecodeError, KeyError):
      break  # a line cut by the kill: it and anything after it go
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def loss_plot(metrics_path: str, out_png: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  with open(metrics_path) as f:
    rows = [json.loads(ln) for ln in f if ln.strip()]
  if not rows:
    return
  fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
  ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1)
  ax.set_xlabel("step")
  ax.set_ylabel("flow-matching loss")
  ax.set_yscale("log")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  tmp = f"{out_png}.tmp-{os.getpid()}.png"
  fig.savefig(tmp)
  plt.close(fig)
  os.replace(tmp, out_png)


def train(cfg: TrainConfig, out: str, *, mesh=None, progress: bool = True) -> dict[str, Any]:
  """Runs (or resumes) training into `out`; returns a summary. A second run on the same `out` while this one runs
  stops at once."""
  with single_writer(out):
    return _train(cfg, out, mesh=mesh, progress=progress)


def _train(cfg: TrainConfig, out: str, *, mesh=None, progress: bool = True) -> dict[str, Any]:
  import orbax.checkpoint as ocp
  os.makedirs(out, exist_ok=True)
  _check_config(out, cfg)
  parts = placement.batch_parts(mesh)
  if cfg.batch % parts:
    raise ValueError(f"TrainConfig.batch={cfg.batch} does not divide over the mesh's data x fsdp = {parts}")
  graphdef = _graphdef(cfg)
  manager = _manager(out, cfg)
  metrics_path = os.path.join(out, "metrics.jsonl")
  start = manager.latest_step()
  if start is None:
    state = init_state(cfg)
    start = 0
  else:
    state = manager.restore(start, args=ocp.args.StandardRestore(restore_target(cfg, mesh)))
  _cut_metrics(metrics_path, start)
  if mesh is not None:
    state = jax.device_put(state, state_shardings(state, mesh))
  counter: list = []
  step_fn = train_step_fn(cfg, graphdef, counter)
  t0 = time.perf_counter()
  last_t, last_step = t0, start
  compile_seconds = None
  bar = progress_bar(cfg.steps, desc="train", unit="step", enabled=progress and is_leader(), initial=start)
  with open(metrics_path, "a") as log:
    for step in range(start, cfg.steps):
      clips, cond = train_batch(cfg, step)
      if mesh is not None:
        clips = placement.put_batch(clips, mesh)
        cond = None if cond is None else jax.tree.map(lambda x: placement.put_batch(x, mesh), cond)
      state, metrics = step_fn(state, clips, step_key(cfg, step), cond)
      done = step + 1
      if compile_seconds is None:
        jax.block_until_ready(metrics["loss"])
        compile_seconds = time.perf_counter() - t0
        last_t, last_step = time.perf_counter(), done
      if done % cfg.log_every == 0 or done == cfg.steps:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        now = time.perf_counter()
        rate = (done - last_step) / (now - last_t) if done > last_step else None
        record = {"step": done, **{k: round(v, 6) for k, v in m.items()},
                  "steps_per_second": None if rate is None else round(rate, 3),
                  "clips_per_second": None if rate is None else round(rate * cfg.batch, 3),
                  "seconds": round(now - t0, 2)}
        if is_leader():
          log.write(json.dumps(record) + "\n")
          log.flush()
        last_t, last_step = now, done
        bar.set_postfix_str(f"loss {m['loss']:.4f} grad {m['grad_norm']:.3f}", refresh=False)
      bar.update(1)
      if done % cfg.save_every == 0 or done == cfg.steps:
        manager.save(done, args=ocp.args.StandardSave(state), force=done == cfg.steps)
        if is_leader():
          loss_plot(metrics_path, os.path.join(out, "loss.png"))
  bar.close()
  manager.wait_until_finished()
  manager.close()
  export = os.path.join(out, "model")
  if is_leader() and (start < cfg.steps or not os.path.exists(export)):
    export_model(cfg, jax.device_get(state["ema"]), export)
  return {"steps": cfg.steps, "resumed_from": start, "ran": cfg.steps - start, "compile_count": len(counter),
          "compile_seconds": None if compile_seconds is None else round(compile_seconds, 2),
          "seconds": round(time.perf_counter() - t0, 2), "out": os.path.abspath(out), "commit": git_commit()}


def export_model(cfg: TrainConfig, params: dict, dest: str) -> str:
  """The (EMA) parameters as an rf_jax DiT checkpoint, replacing `dest` atomically."""
  from rf_jax.registry import flatten
  from rf_jax.checkpoint import save_checkpoint
  flat = {p: np.asarray(v) for p, v in flatten(params).items()}
  return save_checkpoint(dest, cfg.model, flat, meta={"source": "rf-jax train", "weights": "ema",
                                                      "steps": cfg.steps, "commit": git_commit()}, force=True)


def _keyname(k) -> str | int:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return getattr(k, attr)
  return str(k)


def state_shardings(state, mesh=None):
  """A sharding per leaf of a training state (or its abstract form). On a mesh: parameters, AdamW moments and EMA
  by the partition rules (fsdp/tensor), scalars replicated; an optimizer leaf is matched to its parameter by the
  longest tail of its path that is a parameter's path. Without a mesh: the first local device."""
  if mesh is None:
    one = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda _: one, state)
  from rf_jax.parallel import param_spec
  from rf_jax.parallel.placement import mesh_config
  mc = mesh_config(mesh)
  param_paths = {tuple(_keyname(k) for k in path)
                 for path, _ in jax.tree_util.tree_flatten_with_path(state["params"])[0]}

  def spec(path, x):
    names = tuple(_keyname(k) for k in path)
    for i in range(len(names)):
      if names[i:] in param_paths and np.ndim(x):
        return jax.NamedSharding(mesh, param_spec(".".join(map(str, names[i:])), np.shape(x), mc))
    return jax.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree_util.tree_map_with_path(spec, state)


def restore_target(cfg: TrainConfig, mesh=None):
  """The abstract state with the shardings to restore onto (any saved topology restores onto this one)."""
  abstract = abstract_state(cfg)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                      state_shardings(abstract, mesh))
