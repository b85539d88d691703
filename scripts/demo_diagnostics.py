"""Where a trained pixel-space model (`rf-jax train ... --out RUN`) fails: one denoising step, a sampled chunk, or
its own rollout. Every test gives the model the dataset's own clean context, so what it shows is the model, not
exposure bias.

    python scripts/demo_diagnostics.py runs/demo/model [--config configs/train/demo.py] [--out out/diag]

Printed as JSON lines (device, versions, commit):
  one_step   per sigma: mean |x0 estimate - truth| of the last chunk from its *true* noisy version (one model call),
             beside returning the noisy input and copying the last context frame
  sdedit     per starting sigma: the same, after integrating the flow ODE down from that sigma in `--ode-steps`
             Euler steps (sigma 1 = sampling the chunk from pure noise)
  rollout    per sampler (eta 0 = flow ODE, 1 = the reference's re-noising): the model continues the dataset's first
             chunk on its own for `--chunks` chunks (dense context, at most 12 frames); the foreground fraction
             (pixels far from the background colour) of each chunk beside the dataset's
and `OUT/rollout.png`: per sampler, the rolled-out rows, then the dataset's rows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from rf_jax.data.shapes import shapes_batch  # noqa: E402
from rf_jax.runinfo import git_commit  # noqa: E402
from rf_jax.sampling import Sampler  # noqa: E402
from rf_jax.train import load_train_config  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("model", help="a DiT checkpoint folder (a training run's model/)")
  p.add_argument("--config", default=os.path.join(HERE, "..", "configs", "train", "demo.py"),
                 help="the training config it came from (dataset, chunk size)")
  p.add_argument("--out", default="out/demo_diagnostics")
  p.add_argument("--samples", type=int, default=4)
  p.add_argument("--chunks", type=int, default=8)
  p.add_argument("--ode-steps", type=int, default=16)
  p.add_argument("--sampler-steps", type=int, default=8)
  p.add_argument("--shift", type=float, default=3.0, help="the rollout samplers' schedule shift")
  args = p.parse_args(argv)
  from rf_jax.checkpoint import load_model
  cfg = load_train_config(args.config)
  model = load_model(args.model)
  if model.config != cfg.model:
    raise SystemExit(f"{args.model}: its model config is not the one in {args.config}")
  os.makedirs(args.out, exist_ok=True)
  b, c = args.samples, cfg.chunk_frames
  ctx_frames = cfg.clip_frames - c  # the context of the one-chunk tests: a training clip's worth
  frames = max(cfg.clip_frames, args.chunks * c)
  real = jnp.asarray(shapes_batch(cfg.data, seed=cfg.data_seed + 1000, indices=range(b), frames=frames))
  background = np.asarray(cfg.data.background, np.float32) * 2 - 1
  text = jnp.zeros((b, cfg.model.text_len, cfg.model.text_dim))
  forward = jax.jit(lambda x, t: model.forward_train(x, t, text, chunk_frames=c))
  base = {"device": str(jax.devices()[0]), "jax": jax.__version__, "commit": git_commit(), "model": args.model}
  context, truth = real[:, :ctx_frames], real[:, ctx_frames:ctx_frames + c]
  eps = jax.random.normal(jax.random.key(0), truth.shape)

  def flow_of(chunk, sigma):  # the chunk's flow given the clean context
    t = jnp.concatenate([jnp.zeros((b, ctx_frames)), jnp.full((b, c), sigma * 1000.0)], axis=1)
    return forward(jnp.concatenate([context, chunk], axis=1), t)[:, -c:]

  def err(x):
    return round(float(jnp.abs(x - truth).mean()), 4)

  copy_last = err(jnp.broadcast_to(context[:, -1:], truth.shape))
  for sigma in (1.0, 0.9, 0.7, 0.5, 0.3, 0.1):
    x_s = (1 - sigma) * truth + sigma * eps
    x0 = x_s - sigma * flow_of(x_s, sigma)
    print(json.dumps({**base, "test": "one_step", "sigma": sigma, "x0_error": err(x0), "noisy_input_error":
                      err(x_s), "copy_last_frame_error": copy_last}), flush=True)
  for start in (1.0, 0.7, 0.5, 0.3):
    s = np.linspace(start, 0.0, args.ode_steps + 1)
    x = (1 - start) * truth + start * eps
    for i in range(args.ode_steps):
      x = x + (s[i + 1] - s[i]) * flow_of(x, s[i])
    print(json.dumps({**base, "test": "sdedit", "start_sigma": start, "ode_steps": args.ode_steps,
                      "error": err(x), "copy_last_frame_error": copy_last}), flush=True)

  def fg(v):
    return round(float((np.abs(np.clip(np.asarray(v), -1, 1) - background).max(-1) > 0.5).mean()), 4)

  rows = []
  raw = [float(round(s)) for s in np.linspace(1000, 0, args.sampler_steps + 1)[:-1]]
  for eta in (0.0, 1.0):
    sampler = Sampler.from_steps(raw, shift=args.shift, chunk_frames=c, eta=eta)  # the rollout's timesteps
    ts = list(sampler.timesteps)
    sig = [float(v) for v in sampler.schedule.sigma(jnp.asarray(ts))] + [0.0]
    key = jax.random.key(1)
    video = real[:, :c]
    for _ in range(1, args.chunks):
      key, k = jax.random.split(key)
      x = jax.random.normal(k, (b, c) + real.shape[2:])
      hist = video[:, -12:]
      for i in range(args.sampler_steps):
        t = jnp.concatenate([jnp.zeros((b, hist.shape[1])), jnp.full((b, c), ts[i])], axis=1)
        flow = forward(jnp.concatenate([hist, x], axis=1), t)[:, -c:]
        x0 = x - sig[i] * flow
        key, k = jax.random.split(key)
        x = (1 - sig[i + 1]) * x0 + sig[i + 1] * sampler.step_noise(jax.random.normal(k, x.shape), x, flow, sig[i])
      video = jnp.concatenate([video, x], axis=1)
    per_chunk = [fg(video[:, j * c:(j + 1) * c]) for j in range(1, args.chunks)]
    data = [fg(real[:, j * c:(j + 1) * c]) for j in range(1, args.chunks)]
    print(json.dumps({**base, "test": "rollout", "eta": eta, "sampler_steps": args.sampler_steps,
                      "shift": args.shift, "foreground_per_chunk": per_chunk, "dataset_foreground": data}),
          flush=True)
    rows.append(np.asarray(video))
  rows.append(np.asarray(real[:, :args.chunks * c]))
  img = (np.clip(np.concatenate(rows), -1, 1) + 1) / 2  # [rows, T, H, W, 3]
  img = np.pad(img, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), constant_values=1)
  grid = np.concatenate([np.concatenate(list(r), axis=1) for r in img], axis=0)
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  plt.imsave(os.path.join(args.out, "rollout.png"), np.repeat(np.repeat(grid, 2, 0), 2, 1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
