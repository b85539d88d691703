"""What the memory policies do to long videos of the built-in demo model (bouncing shapes, 32x32 pixels).

    python scripts/memory_study.py --out docs/study [--frames 480] [--samples 4]

Each policy rolls out `--samples` videos of `--frames` frames (480 = 30 s at 16 fps) from the same seeds; the
dataset's own clips of the same length are the reference row. Per frame:
  motion       mean |frame - previous frame| (pixels in [0, 1]): is it still moving?
  consistency  how much of frame 0's shapes' colours is still there (foreground-colour histogram intersected with
               frame 0's, over frame 0's foreground; rf_jax.data.shapes.shape_curves): do the shapes keep their
               colour and size, or shrink, fade, vanish or change colour?
  foreground   fraction of pixels far from the background colour, relative to frame 0
Printed as one JSON line per policy (device, versions, commit, steady ms per chunk apart from compile), plotted
into study.png and frame strips strip_<policy>.png.
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
from rf_jax.data.shapes import ShapesConfig, shape_curves, shapes_clip  # noqa: E402
from rf_jax.memory import (DeepForcingPolicy, InfinityRoPEPolicy, RelaxPolicy, SlowFastPolicy,  # noqa: E402
                           WindowPolicy)
from rf_jax.runinfo import git_commit  # noqa: E402
from rf_jax.sampling import Rollout, Sampler  # noqa: E402

POLICIES = {  # name -> (strip file tag, policy)
    "dense (all frames)": ("dense", WindowPolicy(window_frames=-1)),
    "window 12 (Self-Forcing)": ("window", WindowPolicy(window_frames=12)),
    "sink 3 + window 12 (LongLive)": ("sink", WindowPolicy(window_frames=12, sink_frames=3)),
    "relax (sink 2, history 1 of 4, tail 1)": ("relax", RelaxPolicy()),
    "relax, true positions": ("relax_absolute", RelaxPolicy(positions="absolute")),
    "slow_fast (Context Forcing, clean)": ("slow_fast", SlowFastPolicy()),
    "infinity_rope (window 6, sink 1)": ("infinity_rope", InfinityRoPEPolicy()),
    "deep_forcing (window 21, sink 10, capacity 16)": ("deep_forcing", DeepForcingPolicy()),
}


def per_frame(videos: np.ndarray, background: np.ndarray) -> dict[str, np.ndarray]:
  """videos [B, T, H, W, 3] in [-1, 1] -> per-frame curves averaged over samples (`shape_curves`; foreground
  relative to frame 0's)."""
  c = shape_curves(videos, (background + 1) / 2)
  foreground = c["foreground"] / np.maximum(c["foreground"][:, :1], 1e-6)
  return {"motion": c["motion"].mean(0), "consistency": c["consistency"].mean(0), "foreground": foreground.mean(0)}


def summarise(curves: dict[str, np.ndarray], fps: int) -> dict[str, float]:
  w = 5 * fps
  out = {}
  for name, c in curves.items():
    out[f"{name}_first5s"] = round(float(c[1:w + 1].mean()), 4)
    out[f"{name}_last5s"] = round(float(c[-w:].mean()), 4)
  return out


def strip(videos: np.ndarray, fps: int, path: str, scale: int = 3) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  t = videos.shape[1]
  idx = [min(int(s * fps), t - 1) for s in range(0, t // fps + 1, 5)]
  row = np.concatenate([np.pad((np.clip(videos[0, i], -1, 1) + 1) / 2, ((1, 1), (1, 1), (0, 0)), constant_values=1)
                        for i in idx], axis=1)
  plt.imsave(path, np.repeat(np.repeat(row, scale, 0), scale, 1))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="out/memory_study")
  p.add_argument("--frames", type=int, default=480)
  p.add_argument("--samples", type=int, default=4)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--demo", help="a demo folder other than the shipped one (model.safetensors + demo.json)")
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)

  model, info = demo.load_demo(args.demo)
  fps = info.get("fps", demo.FPS)
  sampler = Sampler.from_steps(info["sampler"]["steps"], shift=info["sampler"]["shift"], chunk_frames=3,
                               eta=info["sampler"].get("eta", 1.0))
  h, w = info["frame_hw"]
  frames = -(-args.frames // 3) * 3
  data_cfg = ShapesConfig(size=h, frames=frames)
  background = np.asarray(data_cfg.background, np.float32) * 2 - 1
  base = {"device": str(jax.devices()[0]), "jax": jax.__version__, "commit": git_commit(), "frames": frames,
          "samples": args.samples, "sampler": info["sampler"]}

  real = np.stack([shapes_clip(data_cfg, seed=999, index=i) for i in range(args.samples)])
  results = {"dataset": per_frame(real, background)}
  print(json.dumps({**base, "policy": "dataset", **summarise(results["dataset"], fps)}), flush=True)
  strip(real, fps, os.path.join(args.out, "strip_dataset.png"))
  records = []
  context = jnp.zeros((args.samples, model.config.text_len, model.config.text_dim))
  for name, (tag, policy) in POLICIES.items():
    rollout = Rollout(model, policy, sampler, batch=args.samples, latent_hw=(h, w), frames=frames)
    times = []
    t0 = time.perf_counter()
    chunks = []

    def on_chunk(j, out):
      chunks.append(np.asarray(out.latents))
      times.append(time.perf_counter())
    rollout.run(context, key=jax.random.key(args.seed), on_chunk=on_chunk)
    videos = np.concatenate(chunks, axis=1)
    results[name] = per_frame(videos, background)
    steady = float(np.median(np.diff(times))) if len(times) > 2 else None
    record = {**base, "policy": name, **summarise(results[name], fps), "compile_seconds": round(times[0] - t0, 2),
              "steady_ms_per_chunk": None if steady is None else round(steady * 1e3, 1),
              "memory_state_bytes": int(sum(x.nbytes for x in jax.tree.leaves(rollout.final_state))),
              "compile_count": rollout.compile_count}
    print(json.dumps(record), flush=True)
    strip(videos, fps, os.path.join(args.out, f"strip_{tag}.png"))
    records.append(record)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(3, 1, figsize=(8, 7), dpi=100, sharex=True)
  k = fps  # one-second moving average
  for name, c in results.items():
    for ax, key in zip(axes, ("motion", "consistency", "foreground")):
      y = np.convolve(c[key], np.ones(k) / k, mode="valid")
      ax.plot((np.arange(len(y)) + k) / fps, y, lw=1.2 if name != "dataset" else 2.0,
              color="black" if name == "dataset" else None, ls="--" if name == "dataset" else "-", label=name)
  axes[0].set_ylabel("motion")
  axes[1].set_ylabel("frame 0's shape colours\nstill present")
  axes[2].set_ylabel("foreground\n(x frame 0)")
  axes[2].set_xlabel("seconds")
  axes[0].legend(fontsize=7, ncol=2)
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "study.png"))
  with open(os.path.join(args.out, "study.jsonl"), "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  return 0


if __name__ == "__main__":
  sys.exit(main())
