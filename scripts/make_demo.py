"""Packages a finished run of the demo's last training stage (`rf-jax train configs/train/demo_fade.py`) as the
built-in demo model (rf_jax/assets/demo/), with a few-step sampler fitted to it.

    python scripts/make_demo.py runs/demo_fade [--out rf_jax/assets/demo]
    python scripts/make_demo.py runs/demo_backdrop --backdrop     # the conditional demo -> rf_jax/assets/demo_backdrop

With --backdrop (a run of configs/train/demo_backdrop.py) nothing is fitted: the conditional demo keeps the shipped
demo's sampler and memory, and demo.json gains its prompts (the `WordEncoder` table it was trained with), the
default prompt, and `switch_check`: what a prompt switch does to its videos (`demo.switch_check`, with the memory's
default re-cache and with none).

Fitting: for each candidate sampler (denoising steps x schedule shift x re-noising eta), the EMA model rolls out
`--samples` videos of 96 frames under the demo's memory (MEMORY, stored in demo.json as `memory`: what
`rf-jax generate` runs the demo with), and the candidate is scored by how
far its frames are from held-out dataset clips
(`score` = L1 distance of the mean colour histograms + |mean motion - data's| / data's + |foreground - data's| /
data's + 1 - consistency / data's, where foreground is the fraction of pixels far from the background colour and
consistency how much of frame 0's shape colours is still present over the second half (`shape_curves`): a sampler
whose shapes fade into the background scores badly even though its colour histogram, mostly background, looks
right, and so does one that keeps the right amount of shapes on average while losing them in some videos).
The lowest score wins; every candidate's numbers go into demo.json, with `shipped_check`: what the fitted sampler's
rollouts under that memory keep of the dataset's motion and shapes (`demo.rollout_check`, what tests/test_demo.py
holds the shipped model to).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rf_jax import demo  # noqa: E402
from rf_jax.data.shapes import shape_curves, shapes_batch  # noqa: E402
from rf_jax.memory import RelaxPolicy, policy_to_dict  # noqa: E402
from rf_jax.runinfo import git_commit  # noqa: E402
from rf_jax.sampling import Rollout, Sampler  # noqa: E402
from rf_jax.train import load_train_config  # noqa: E402

CANDIDATES = [(steps, shift, eta) for steps in (4, 8, 16) for shift in (1.0, 3.0) for eta in (0.0, 1.0)]
FIT_FRAMES = 96  # 6 s: long enough that a sampler whose shapes vanish after a few seconds loses
# The demo's memory, written into demo.json (what `rf-jax generate` runs the demo with): Relax Forcing as upstream
# sets it up (sink 2, history 1 of 4, tail 1, hybrid positions).
MEMORY = RelaxPolicy()


def histograms(frames: np.ndarray) -> np.ndarray:
  """[N, H, W, 3] in [-1, 1] -> mean colour histogram (4 bins per channel)."""
  px = ((np.clip(frames, -1, 1) + 1) * 127.5).reshape(-1, 3)
  h = np.histogramdd(px, bins=(4, 4, 4), range=((0, 256),) * 3)[0].ravel()
  return h / h.sum()


def foreground(clips: np.ndarray, background: np.ndarray) -> float:
  """Fraction of pixels farther than 0.5 (in [-1, 1] units) from the background colour."""
  return float((np.abs(np.clip(clips, -1, 1) - background).max(-1) > 0.5).mean())


def motion(clips: np.ndarray) -> float:
  """[B, T, H, W, 3] -> mean |frame difference| (in [-1, 1] units)."""
  return float(np.abs(np.diff(clips, axis=1)).mean())


def consistency(clips: np.ndarray) -> float:
  """[B, T, H, W, 3] -> mean over the second half of the frames of frame 0's shape colours still present."""
  c = shape_curves(clips)["consistency"]  # [B, T]
  return float(c[:, c.shape[1] // 2:].mean())


def _run_summary(init: str | None) -> dict | None:
  """Steps, seconds and commit of the training run whose model/ a stage started from (its log and model/meta.json)."""
  if init is None:
    return None
  run = os.path.dirname(os.path.abspath(init))
  try:
    with open(os.path.join(run, "metrics.jsonl")) as f:
      last = [json.loads(ln) for ln in f if ln.strip()][-1]
    with open(os.path.join(run, "model", "meta.json")) as f:
      meta = json.load(f)
  except (OSError, ValueError, IndexError):
    return {"run": run, "found": False}
  return {"run": run, "steps": last["step"], "seconds": last.get("seconds"), "final_loss": last.get("loss"),
          "commit": meta.get("commit")}


def _trained_commit(run: str) -> str | None:
  """The commit the run's model/ was exported at (model/meta.json), not the commit that packages it."""
  try:
    with open(os.path.join(run, "model", "meta.json")) as f:
      return json.load(f).get("commit")
  except (OSError, ValueError):
    return None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("run", help="a finished training run folder (rf-jax train ... --out RUN)")
  p.add_argument("--config", help="the training config of RUN (default: the demo's last stage, configs/train/"
                 "demo_fade.py; with --backdrop configs/train/demo_backdrop.py)")
  p.add_argument("--out", help="default rf_jax/assets/demo (--backdrop: rf_jax/assets/demo_backdrop)")
  p.add_argument("--samples", type=int, default=4)
  p.add_argument("--backdrop", action="store_true", help="package the conditional demo (no sampler fit)")
  args = p.parse_args(argv)
  configs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "train")
  args.config = args.config or os.path.join(configs, "demo_backdrop.py" if args.backdrop else "demo_fade.py")
  args.out = args.out or (demo.BACKDROP_DIR if args.backdrop else demo.ASSET_DIR)

  from rf_jax.checkpoint import load_model, load_params
  from flax import nnx
  cfg = load_train_config(args.config)
  model = load_model(os.path.join(args.run, "model"))
  with open(os.path.join(args.run, "metrics.jsonl")) as f:
    log = [json.loads(ln) for ln in f if ln.strip()]
  if not log or log[-1]["step"] != cfg.steps:
    raise SystemExit(f"{args.run}: training is not finished (last logged step {log[-1]['step'] if log else None})")

  trained = {"config": os.path.relpath(os.path.abspath(args.config), os.path.join(os.path.dirname(
                 os.path.abspath(__file__)), "..")), "steps": cfg.steps, "batch": cfg.batch,
             "clip_frames": cfg.clip_frames, "final_loss": log[-1]["loss"], "seconds": log[-1]["seconds"],
             "device": str(jax.devices()[0]), "jax": jax.__version__, "commit": _trained_commit(args.run),
             "packaged_commit": git_commit(), "init": cfg.init, "init_run": _run_summary(cfg.init)}
  if args.backdrop:
    return package_backdrop(args, cfg, model, trained)

  real = shapes_batch(cfg.data, seed=cfg.data_seed + 1000, indices=range(16))[:, :FIT_FRAMES]  # held out
  background = np.asarray(cfg.data.background, np.float32) * 2 - 1
  real_hist, real_motion, real_fg = histograms(real), motion(real), foreground(real, background)
  real_cons = consistency(real)
  context = jnp.zeros((args.samples, cfg.model.text_len, cfg.model.text_dim))
  results = []
  for steps, shift, eta in CANDIDATES:
    raw = [float(round(x)) for x in np.linspace(1000, 0, steps + 1)[:-1]]
    sampler = Sampler.from_steps(raw, shift=shift, chunk_frames=cfg.chunk_frames, eta=eta)
    rollout = Rollout(model, MEMORY, sampler, batch=args.samples,
                      latent_hw=(cfg.data.size, cfg.data.size), frames=FIT_FRAMES)
    t0 = time.perf_counter()
    videos, _ = rollout.run(context, key=jax.random.key(123))
    videos = np.asarray(videos)
    hist_l1 = float(np.abs(histograms(videos) - real_hist).sum())
    mot, fg, cons = motion(videos), foreground(videos, background), consistency(videos)
    score = (hist_l1 + abs(mot - real_motion) / real_motion + abs(fg - real_fg) / real_fg
             + max(0.0, 1 - cons / real_cons))
    results.append({"steps": steps, "shift": shift, "eta": eta, "raw_steps": raw,
                    "histogram_l1": round(hist_l1, 4), "motion": round(mot, 5), "foreground": round(fg, 4),
                    "consistency": round(cons, 4),
                    "score": round(score, 4),
                    "seconds": round(time.perf_counter() - t0, 2)})
    print(json.dumps(results[-1]), flush=True)
  best = min(results, key=lambda r: r["score"])
  params = nnx.to_pure_dict(load_params(os.path.join(args.run, "model"))[1])
  info = {
      "sampler": {"steps": best["raw_steps"], "shift": best["shift"], "eta": best["eta"]},
      "memory": policy_to_dict(MEMORY),
      "frame_hw": [cfg.data.size, cfg.data.size],
      "default_frames": 480,
      "fps": demo.FPS,
      "trained": trained,
      "sampler_fit": {"data_motion": round(real_motion, 5), "data_foreground": round(real_fg, 4),
                      "data_consistency": round(real_cons, 4),
                      "candidates": results},
  }
  info["shipped_check"] = demo.rollout_check(model, info, frames=480, samples=4, seed=0, last=80)  # tests/test_demo.py
  print(json.dumps({"shipped_check": info["shipped_check"]}), flush=True)
  demo.write_demo(args.out, cfg.model, jax.device_get(params), info)
  size = os.path.getsize(os.path.join(args.out, "model.safetensors"))
  print(json.dumps({"out": os.path.abspath(args.out), "bytes": size, "sampler": info["sampler"]}))
  return 0


def package_backdrop(args, cfg, model, trained: dict) -> int:
  """The conditional demo: the shipped demo's sampler and memory, its prompts, and the checks."""
  from flax import nnx
  from rf_jax.checkpoint import load_params
  from rf_jax.sampling import Recache
  from rf_jax.text.words import WordEncoder
  if not cfg.backdrops:
    raise SystemExit(f"{args.config}: not a conditional config (TrainConfig.backdrops is empty)")
  base = demo.load_info(demo.ASSET_DIR)
  if trained["init"] and os.path.isfile(os.path.join(trained["init"], "demo.json")):  # the shipped demo's folder
    trained["init"] = os.path.relpath(trained["init"], os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    trained["init_run"] = {"demo": trained["init"], "trained": base.get("trained")}
  info = {"sampler": base["sampler"], "memory": base["memory"], "frame_hw": [cfg.data.size, cfg.data.size],
          "default_frames": 480, "fps": demo.FPS,
          "prompts": WordEncoder.fixed(cfg.backdrops, cfg.model.text_dim).to_dict(),
          "default_prompt": cfg.backdrops[0], "trained": trained}
  info["shipped_check"] = demo.rollout_check(model, info, frames=480, samples=4, seed=0, last=80)
  print(json.dumps({"shipped_check": info["shipped_check"]}), flush=True)
  info["switch_check"] = demo.switch_check(model, info)  # tests/test_demo.py
  info["switch_check_no_recache"] = demo.switch_check(model, info, recache=Recache.NONE)
  print(json.dumps({k: info[k] for k in ("switch_check", "switch_check_no_recache")}), flush=True)
  params = nnx.to_pure_dict(load_params(os.path.join(args.run, "model"))[1])
  demo.write_demo(args.out, cfg.model, jax.device_get(params), info)
  print(json.dumps({"out": os.path.abspath(args.out),
                    "bytes": os.path.getsize(os.path.join(args.out, "model.safetensors"))}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
