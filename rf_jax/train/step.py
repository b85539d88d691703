"""The training step: diffusion-forcing flow matching under the block-causal mask, AdamW, clipping, EMA.

    state = init_state(cfg)                        # {"step", "params", "opt_state", "ema"}: a pytree
    state, metrics = train_step(state, clips, key) # jitted once (train_step_fn)

Per chunk c of a clip x0 [B, F, H, W, 3]: clean context (timestep 0, no loss) before a random frontier chunk, else a
timestep t_c from the schedule's table (uniform index), sigma_c = sigma(t_c);
    x_t = (1 - sigma_c) x0 + sigma_c eps,   target flow = eps - x0,   loss = mean over noisy chunks |flow - target|^2
(cfg.loss == "x0": of (x0_hat - x0) / max(sigma_c, floor) instead, x0_hat = x_t - sigma_c * flow: the flow loss
where sigma_c >= floor, the clean-sample error scaled by 1 / floor below; floor 1 is the plain x0 MSE).

Self-context (cfg.self_context > 0): for a random fraction of clips the clean context frames show the model's own
one-step reconstruction of a noised copy of the clip (no gradient through it) instead of the clip; the noisy chunks
and the target stay the real clip's. A rollout conditions on its own imperfect chunks, never on clean data: so the
model learns to restore the shapes from such context rather than copy, and compound, its errors.
Context fade (cfg.context_fade > 0): for a random fraction of clips each clean context frame is faded towards the
background colour by its own factor a in [context_fade_min, 1], bg + a (frame - bg); the noisy chunks and the target
stay as they are. Against the slow fading of a rollout's shapes.
Backdrops (cfg.backdrops, a conditional model): each clip is drawn over its own backdrop and the model reads that
word as text; for a fraction cfg.backdrop_switch of them the clean context frames show another backdrop (a prompt
switch at the frontier); the fade goes towards the backdrop a frame shows, and self-context reconstructs the frames
the context shows.
The model sees all chunks at once with the block-causal mask (each chunk attends to itself and earlier chunks), the
training-path forward of the reference (`forward_train`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rf_jax.ops import AttnImpl
from rf_jax.sampling.schedule import FlowSchedule
from rf_jax.train.config import OptimConfig, TrainConfig

Array = jax.Array


def learning_rate(optim: OptimConfig, steps: int) -> optax.Schedule:
  """Linear warm-up to lr, then cosine decay to end_lr_ratio * lr at `steps`."""
  warmup = max(optim.warmup_steps, 1)
  return optax.warmup_cosine_decay_schedule(0.0, optim.lr, warmup, max(steps, warmup + 1),
                                            end_value=optim.lr * optim.end_lr_ratio)


def optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  o = cfg.optim
  return optax.chain(optax.clip_by_global_norm(o.clip_norm),
                     optax.adamw(learning_rate(o, cfg.steps), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))


def build_model(cfg: TrainConfig, *, abstract: bool = False):
  """The model being trained: cfg.model's random weights from cfg.seed. Attention runs on the XLA backend, which
  every platform differentiates (the kernels' backward pass is that same reference)."""
  from rf_jax.pipeline import DiTSource, load_dit
  return load_dit(DiTSource.random(cfg.model, cfg.seed), dtype=cfg.compute_dtype, attn_impl=AttnImpl.REFERENCE,
                  abstract=abstract)


def initial_params(cfg: TrainConfig) -> dict[str, Any]:
  """The float32 parameters of step 0: a fresh model from cfg.seed, or the checkpoint or demo folder cfg.init (same
  config)."""
  if cfg.init is None:
    params = nnx.to_pure_dict(nnx.state(build_model(cfg), nnx.Param))
  else:
    import os
    from rf_jax.checkpoint import load_params
    if os.path.isfile(os.path.join(cfg.init, "demo.json")):  # a demo folder: float32 safetensors
      from rf_jax import demo
      model = demo.load_demo(cfg.init)[0]
      config, state = model.config, nnx.state(model, nnx.Param)
    else:
      config, state = load_params(cfg.init)
    if config != cfg.model:
      want = cfg.model.to_dict()
      diff = sorted(k for k, v in config.to_dict().items() if want.get(k) != v)
      raise ValueError(f"TrainConfig.init={cfg.init}: the checkpoint's model config differs from TrainConfig.model "
                       f"in {', '.join(diff)}")
    params = nnx.to_pure_dict(state)
  return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def init_state(cfg: TrainConfig) -> dict[str, Any]:
  """Step 0: the initial float32 parameters (`initial_params`), AdamW's state and the EMA (= the parameters)."""
  params = initial_params(cfg)
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer(cfg).init(params),
          "ema": jax.tree.map(jnp.copy, params)}


def abstract_state(cfg: TrainConfig) -> dict[str, Any]:
  return jax.eval_shape(lambda: init_state(cfg))


def chunk_noise_levels(cfg: TrainConfig, key: Array, batch: int) -> tuple[Array, Array]:
  """(timesteps [B, chunks] float32 (0 = clean), noisy [B, chunks] bool).

  Per clip a frontier chunk c is drawn uniformly: chunks before it are clean context (teacher forcing: what the
  rollout's cache shows the model), chunks from c on are noisy, each at its own timestep drawn uniformly from the
  schedule's table (diffusion forcing: later chunks learn from noisy context too).
  """
  chunks = cfg.clip_frames // cfg.chunk_frames
  _, timesteps = FlowSchedule(shift=cfg.shift).tables()
  k_idx, k_front = jax.random.split(key)
  idx = jax.random.randint(k_idx, (batch, chunks), 0, len(timesteps))
  frontier = jax.random.randint(k_front, (batch, 1), 0, chunks)
  noisy = jnp.arange(chunks)[None, :] >= frontier
  return jnp.where(noisy, jnp.asarray(timesteps)[idx], 0.0), noisy


def loss_fn(params, graphdef, cfg: TrainConfig, clips: Array, key: Array, cond: dict | None = None
            ) -> tuple[Array, dict]:
  """clips [B, F, H, W, 3] in [-1, 1] -> (loss, aux). cond: a conditional model's batch (`train_batch`)."""
  b, f = clips.shape[:2]
  k_t, k_eps = jax.random.split(key)
  t_chunk, noisy = chunk_noise_levels(cfg, k_t, b)
  t = jnp.repeat(t_chunk, cfg.chunk_frames, axis=1)  # [B, F]
  sched = FlowSchedule(shift=cfg.shift)
  eps = jax.random.normal(k_eps, clips.shape, jnp.float32)
  noisy_f = jnp.repeat(noisy, cfg.chunk_frames, axis=1)  # [B, F]
  model = nnx.merge(graphdef, params)
  aux = {"noisy_fraction": jnp.mean(noisy.astype(jnp.float32))}
  bg = jnp.broadcast_to(jnp.asarray(cfg.data.background, jnp.float32) * 2 - 1, (b, f, 3))  # what each frame is over
  if cond is None:
    context = jnp.zeros((b, cfg.model.text_len, cfg.model.text_dim), jnp.float32)  # unconditional
    shown = clips  # what the clean context frames show
  else:
    context = cond["context"]  # [B, text_len, text_dim]
    before = (cond["switch"][:, None] & ~noisy_f)  # [B, F]: context frames still showing the old backdrop
    shown = jnp.where(before[:, :, None, None, None], cond["before"], clips)
    bg = jnp.where(before[:, :, None], cond["bg_before"][:, None], cond["bg"][:, None])
    aux["switch_fraction"] = jnp.mean(cond["switch"].astype(jnp.float32))
  if cfg.self_context > 0:  # (static)
    recon, use = _self_context(model, cfg, sched, shown, context, jax.random.fold_in(key, 1))
    swap = use[:, None] & ~noisy_f  # [B, F]: the clean context frames of the chosen clips
    shown = jnp.where(swap[:, :, None, None, None], recon, shown)
    aux["self_context_fraction"] = jnp.mean(use.astype(jnp.float32))
  if cfg.context_fade > 0:  # (static) fade clean context frames towards the background colour
    k_use, k_a = jax.random.split(jax.random.fold_in(key, 2))
    use = jax.random.bernoulli(k_use, cfg.context_fade, (b,))
    a = jax.random.uniform(k_a, (b, f), minval=cfg.context_fade_min, maxval=1.0)  # [B, F]
    a = jnp.where(use[:, None] & ~noisy_f, a, 1.0)[:, :, None, None, None]
    bg = bg[:, :, None, None, :]  # [B, F, 1, 1, 3]
    shown = bg + a * (shown - bg)
    aux["context_fade_fraction"] = jnp.mean(use.astype(jnp.float32))
  # (the schedule's table has no sigma 0: its nearest to t = 0 is ~0.003, so context frames are kept as they are)
  x_t = jnp.where(noisy_f[:, :, None, None, None], sched.add_noise(clips, eps, t), shown)
  flow = model.forward_train(x_t, t, context, chunk_frames=cfg.chunk_frames).astype(jnp.float32)
  diff = flow - (eps - clips)  # [B, F, H, W, 3]
  if cfg.loss == "x0":  # x0_hat - x0 = -sigma * (flow - target), over max(sigma, floor)
    sigma = sched.sigma(t)[:, :, None, None, None]
    diff = diff * sigma / jnp.maximum(sigma, cfg.x0_loss_sigma_floor)
  err = jnp.mean(jnp.square(diff), axis=(2, 3, 4))  # [B, F]
  weight = noisy_f.astype(jnp.float32)
  loss = jnp.sum(err * weight) / jnp.sum(weight)
  return loss, aux


def _self_context(model, cfg: TrainConfig, sched: FlowSchedule, clips: Array, context: Array,
                  key: Array) -> tuple[Array, Array]:
  """(the model's one-step reconstruction x0_hat of each clip from a copy noised to a sigma drawn uniformly in
  cfg.self_context_sigma [B, F, H, W, 3] (no gradient), which clips use it [B] bool (probability cfg.self_context))."""
  b, f = clips.shape[:2]
  k_sig, k_eps, k_use = jax.random.split(key, 3)
  lo, hi = cfg.self_context_sigma
  sigma = jax.random.uniform(k_sig, (b, 1), minval=lo, maxval=hi)
  t = jnp.broadcast_to(sigma * sched.num_train_timesteps, (b, f))  # [B, F]
  x_s = sched.add_noise(clips, jax.random.normal(k_eps, clips.shape, jnp.float32), t)
  flow = jax.lax.stop_gradient(model.forward_train(x_s, t, context, chunk_frames=cfg.chunk_frames))
  return sched.x0_from_flow(x_s, flow, t), jax.random.bernoulli(k_use, cfg.self_context, (b,))


def train_step_fn(cfg: TrainConfig, graphdef, counter: list | None = None):
  """The jitted step (state, clips, key, cond=None) -> (state, metrics); `counter` counts its traces (compiles)."""
  tx = optimizer(cfg)
  lr = learning_rate(cfg.optim, cfg.steps)

  def step(state, clips, key, cond=None):
    if counter is not None:
      counter.append(1)
    params = state["params"]
    (loss, aux), grads = jax.value_and_grad(
        lambda p: loss_fn(p, graphdef, cfg, clips, key, cond), has_aux=True)(params)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    params = optax.apply_updates(params, updates)
    d = cfg.ema_decay
    ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state["ema"], params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr(state["step"]), **aux}
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state, "ema": ema}, metrics

  return jax.jit(step, donate_argnums=0)


@functools.lru_cache(maxsize=4)
def _graphdef(cfg: TrainConfig):
  return nnx.graphdef(build_model(cfg, abstract=True))


def step_key(cfg: TrainConfig, step: int) -> Array:
  """The noise key of a step: a function of the seed and the step alone (so a resumed run draws the same)."""
  return jax.random.fold_in(jax.random.key(cfg.seed + 1), step)


def batch_indices(cfg: TrainConfig, step: int) -> np.ndarray:
  """The dataset clips of a step: an endless stream of distinct clips, step * batch + i."""
  return np.arange(step * cfg.batch, (step + 1) * cfg.batch)


def train_batch(cfg: TrainConfig, step: int) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
  """(clips [B, F, H, W, 3], cond) of a step: the dataset clips `batch_indices`; for a conditional model
  (cfg.backdrops) each over its backdrop, and cond = {context [B, text_len, text_dim] (the backdrop's word),
  switch [B] bool, before [B, F, H, W, 3] (the same clip over another backdrop, shown as context where switch),
  bg, bg_before [B, 3] (the two backdrops in [-1, 1])}. Every choice is a function of (data_seed, clip index)."""
  from rf_jax.data.shapes import BACKDROPS, shapes_batch, shapes_clip
  indices = batch_indices(cfg, step)
  if not cfg.backdrops:
    return shapes_batch(cfg.data, seed=cfg.data_seed, indices=indices, frames=cfg.clip_frames), None
  from rf_jax.text.words import WordEncoder
  words = WordEncoder.fixed(cfg.backdrops, cfg.model.text_dim)
  n = len(cfg.backdrops)
  picks, afters, befores, switch = [], [], [], []
  for i in indices:
    rng = np.random.Generator(np.random.Philox(key=[cfg.data_seed & 0xFFFFFFFFFFFFFFFF, int(i) + (1 << 62)]))
    w = int(rng.integers(n))
    s = bool(rng.uniform() < cfg.backdrop_switch)
    o = (w + 1 + int(rng.integers(n - 1))) % n if n > 1 else w  # another backdrop
    picks.append((w, o))
    switch.append(s)
    for word, out in ((cfg.backdrops[w], afters), (cfg.backdrops[o], befores)):
      out.append(shapes_clip(cfg.data, seed=cfg.data_seed, index=int(i), frames=cfg.clip_frames,
                             background=BACKDROPS[word]))
  rgb = lambda k: np.asarray([BACKDROPS[cfg.backdrops[p[k]]] for p in picks], np.float32) * 2 - 1  # noqa: E731
  cond = {"context": words([cfg.backdrops[w] for w, _ in picks], cfg.model.text_len),
          "switch": np.asarray(switch), "before": np.stack(befores), "bg": rgb(0), "bg_before": rgb(1)}
  return np.stack(afters), cond
