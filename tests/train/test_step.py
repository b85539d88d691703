"""The training step's pieces: starting from a checkpoint (fine-tuning)."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from rf_jax.train import load_train_config
from rf_jax.train import step as step_mod

HERE = os.path.dirname(os.path.abspath(__file__))
TINY = os.path.join(HERE, "..", "..", "configs", "train", "tiny.py")


@pytest.fixture(scope="module")
def tiny():
  return load_train_config(TINY)


def test_init_starts_from_the_checkpoint_and_refuses_another_architecture(tiny, tmp_path):
  from rf_jax.registry import flatten
  from rf_jax.checkpoint import save_checkpoint
  cfg = tiny
  other = dataclasses.replace(cfg, seed=7)
  params = step_mod.initial_params(other)
  save_checkpoint(str(tmp_path / "ckpt"), cfg.model, {p: np.asarray(v) for p, v in flatten(params).items()})
  state = step_mod.init_state(dataclasses.replace(cfg, init=str(tmp_path / "ckpt")))
  for a, b, e in zip(jax.tree.leaves(params), jax.tree.leaves(state["params"]), jax.tree.leaves(state["ema"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))
  fresh = step_mod.initial_params(cfg)
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(fresh)))
  deeper = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_layers=3))
  with pytest.raises(ValueError, match="differs from TrainConfig.model in num_layers"):
    step_mod.initial_params(dataclasses.replace(deeper, init=str(tmp_path / "ckpt")))


def test_a_missing_init_checkpoint_is_named(tiny, tmp_path):
  with pytest.raises((FileNotFoundError, ValueError), match="nowhere"):
    step_mod.initial_params(dataclasses.replace(tiny, init=str(tmp_path / "nowhere")))


@pytest.mark.parametrize("loss,floor", [("flow", 1.0), ("x0", 1.0), ("x0", 0.3)])
def test_the_loss_is_the_mse_of_the_flow_or_of_the_clean_sample_estimate(tiny, loss, floor, monkeypatch):
  """With a model whose flow is 0, the loss follows from the inputs it was shown alone: x_t, t (0 = clean context)
  and the clip. loss="flow": mean over noisy frames of |eps - x0|^2, eps = (x_t - (1 - sigma) x0) / sigma;
  loss="x0": of |(x0_hat - x0) / max(sigma, floor)|^2 with x0_hat = x_t - sigma * 0 = x_t."""
  import jax.numpy as jnp
  from rf_jax.model import CausalWanDiT
  from rf_jax.sampling.schedule import FlowSchedule
  cfg = dataclasses.replace(tiny, loss=loss, x0_loss_sigma_floor=floor)
  seen = {}

  def zero_flow(self, x, t, context, *, chunk_frames=3, local_window_frames=-1):
    seen["x"], seen["t"] = np.asarray(x, np.float64), np.asarray(t, np.float64)
    return jnp.zeros_like(x)

  monkeypatch.setattr(CausalWanDiT, "forward_train", zero_flow)
  clips = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, cfg.clip_frames, 16, 16, 3)), jnp.float32)
  got, _ = step_mod.loss_fn(step_mod.initial_params(cfg), step_mod._graphdef(cfg), cfg, clips, jax.random.key(3))
  x, t, x0 = seen["x"], seen["t"], np.asarray(clips, np.float64)
  sigmas, timesteps = FlowSchedule(shift=cfg.shift).tables()
  sigma = np.interp(t, timesteps[::-1], sigmas[::-1])[:, :, None, None, None]  # exact at table timesteps
  noisy = t > 0
  assert noisy.any() and (~noisy).any() or noisy.all()
  if loss == "flow":
    per = np.where(noisy[:, :, None, None, None], (x - (1 - sigma) * x0) / np.maximum(sigma, 1e-9) - x0, 0.0)
  else:
    per = np.where(noisy[:, :, None, None, None], (x - x0) / np.maximum(sigma, floor), 0.0)
  want = np.sum(np.mean(per**2, axis=(2, 3, 4))) / np.sum(noisy)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)
  np.testing.assert_array_equal(x[~noisy], x0[~noisy])  # clean context is shown as it is


def test_an_unknown_loss_or_a_bad_floor_is_refused(tiny):
  with pytest.raises(ValueError, match="TrainConfig.loss='eps'"):
    dataclasses.replace(tiny, loss="eps")
  with pytest.raises(ValueError, match="x0_loss_sigma_floor=0"):
    dataclasses.replace(tiny, loss="x0", x0_loss_sigma_floor=0.0)


def _clips(cfg, n=3):
  import jax.numpy as jnp
  return jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (n, cfg.clip_frames, 16, 16, 3)), jnp.float32)


def test_self_context_replaces_only_the_clean_context_frames(tiny, monkeypatch):
  """The model is shown the reconstruction on the clean context frames of the chosen clips, and exactly what it is
  shown without self-context everywhere else (same key: same noise levels and noise)."""
  from rf_jax.model import CausalWanDiT
  import jax.numpy as jnp
  shown = []

  def record(self, x, t, context, *, chunk_frames=3, local_window_frames=-1):
    shown.append((np.asarray(x), np.asarray(t)))
    return jnp.zeros_like(x)

  cfg, clips = tiny, _clips(tiny)
  params = step_mod.initial_params(cfg)
  on = dataclasses.replace(cfg, self_context=1.0)
  use = jnp.array([True, False, True])
  monkeypatch.setattr(step_mod, "_self_context", lambda m, c, s, x, ctx, k: (x + 5.0, use))
  monkeypatch.setattr(CausalWanDiT, "forward_train", record)
  for key in (jax.random.key(1), jax.random.key(2), jax.random.key(5)):
    shown.clear()
    step_mod.loss_fn(params, step_mod._graphdef(cfg), cfg, clips, key)
    step_mod.loss_fn(params, step_mod._graphdef(on), on, clips, key)
    (x_off, t_off), (x_on, t_on) = shown
    np.testing.assert_array_equal(t_on, t_off)
    swap = np.asarray(use)[:, None] & (t_off == 0)  # [B, F]
    np.testing.assert_array_equal(x_on[swap], np.asarray(clips)[swap] + 5.0)
    np.testing.assert_array_equal(x_on[~swap], x_off[~swap])


def test_no_gradient_flows_through_the_self_context_reconstruction(tiny, monkeypatch):
  """The gradient with the reconstruction computed inside the step equals the one with the same reconstruction fed
  in as a constant."""
  import jax.numpy as jnp
  from flax import nnx
  from rf_jax.sampling.schedule import FlowSchedule
  cfg = dataclasses.replace(tiny, self_context=1.0)
  clips, key, graphdef = _clips(cfg), jax.random.key(3), step_mod._graphdef(cfg)
  params = step_mod.initial_params(cfg)
  loss = lambda p: step_mod.loss_fn(p, graphdef, cfg, clips, key)[0]  # noqa: E731
  g = jax.grad(loss)(params)
  ctx = jnp.zeros((clips.shape[0], cfg.model.text_len, cfg.model.text_dim))
  recon, use = step_mod._self_context(nnx.merge(graphdef, params), cfg, FlowSchedule(shift=cfg.shift), clips, ctx,
                                      jax.random.fold_in(key, 1))
  assert bool(use.all()) and float(jnp.abs(recon - clips).mean()) > 0.01
  monkeypatch.setattr(step_mod, "_self_context", lambda *a: (recon, use))
  g_const = jax.grad(loss)(params)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_const)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_bad_self_context_settings_are_refused(tiny):
  with pytest.raises(ValueError, match="self_context"):
    dataclasses.replace(tiny, self_context=1.5)
  with pytest.raises(ValueError, match="self_context_sigma"):
    dataclasses.replace(tiny, self_context_sigma=(0.5, 0.2))


def test_context_fade_fades_only_the_clean_context_frames_towards_the_background(tiny, monkeypatch):
  """With context_fade=1 every clean context frame is bg + a (clip - bg) with one a in [min, 1] per frame (read back
  from the pixels); everything else is what the model is shown without it (same key)."""
  from rf_jax.model import CausalWanDiT
  import jax.numpy as jnp
  shown = []

  def record(self, x, t, context, *, chunk_frames=3, local_window_frames=-1):
    shown.append((np.asarray(x, np.float64), np.asarray(t)))
    return jnp.zeros_like(x)

  cfg = dataclasses.replace(tiny, clip_frames=12)
  on = dataclasses.replace(cfg, context_fade=1.0, context_fade_min=0.25)
  clips = _clips(cfg, n=4)
  params = step_mod.initial_params(cfg)
  monkeypatch.setattr(CausalWanDiT, "forward_train", record)
  bg = np.asarray(cfg.data.background, np.float64) * 2 - 1
  factors = []
  for key in (jax.random.key(1), jax.random.key(2)):
    shown.clear()
    step_mod.loss_fn(params, step_mod._graphdef(cfg), cfg, clips, key)
    _, aux = step_mod.loss_fn(params, step_mod._graphdef(on), on, clips, key)
    assert float(aux["context_fade_fraction"]) == 1.0
    (x_off, t_off), (x_on, t_on) = shown
    np.testing.assert_array_equal(t_on, t_off)
    clean = t_off == 0  # [B, F]
    assert clean.any()
    np.testing.assert_array_equal(x_on[~clean], x_off[~clean])
    c = np.asarray(clips, np.float64)
    for b, f in zip(*np.nonzero(clean)):
      d = c[b, f] - bg
      a = np.sum((x_on[b, f] - bg) * d) / np.sum(d * d)  # least squares; then it must fit every pixel
      np.testing.assert_allclose(x_on[b, f], bg + a * d, atol=1e-5)
      factors.append(a)
  factors = np.asarray(factors)
  assert factors.min() >= 0.25 - 1e-6 and factors.max() <= 1 + 1e-6 and factors.std() > 0.05


def test_bad_context_fade_settings_are_refused(tiny):
  with pytest.raises(ValueError, match="context_fade"):
    dataclasses.replace(tiny, context_fade=1.5)
  with pytest.raises(ValueError, match="context_fade_min"):
    dataclasses.replace(tiny, context_fade_min=-0.1)


def test_the_demo_training_stages_chain_one_model(monkeypatch):
  """configs/train/demo_base.py -> demo.py -> demo_sc.py -> demo_fade.py: each stage starts from the previous one's
  model/ (as the README's commands write them) and has its architecture, which `init` requires."""
  for var in ("RF_JAX_DEMO_BASE", "RF_JAX_DEMO_STAGE2", "RF_JAX_DEMO_STAGE3"):
    monkeypatch.delenv(var, raising=False)
  root = os.path.join(HERE, "..", "..", "configs", "train")
  stages = [load_train_config(os.path.join(root, f"{name}.py"))
            for name in ("demo_base", "demo", "demo_sc", "demo_fade")]
  assert stages[0].init is None
  for prev_out, stage in zip(("runs/demo_base", "runs/demo", "runs/demo_sc"), stages[1:]):
    assert stage.init == f"{prev_out}/model" and stage.model == stages[0].model
  assert stages[3].context_fade > 0 and stages[3].model.prediction == "x0"


def test_a_conditional_batch_is_each_clip_over_its_backdrop_and_deterministic(tiny):
  """train_batch with backdrops: the clip is the dataset's clip over the chosen backdrop (rendered independently
  here), `before` the same clip over another one, the text the word's vector; the same step gives the same batch."""
  from rf_jax.data.shapes import BACKDROPS, shapes_clip
  from rf_jax.text.words import WordEncoder
  cfg = dataclasses.replace(tiny, backdrops=("black", "blue", "red"), backdrop_switch=0.5, batch=16)
  clips, cond = step_mod.train_batch(cfg, 3)
  again, cond2 = step_mod.train_batch(cfg, 3)
  np.testing.assert_array_equal(clips, again)
  for k in cond:
    np.testing.assert_array_equal(cond[k], cond2[k])
  words = WordEncoder.fixed(cfg.backdrops, cfg.model.text_dim)
  assert cond["context"].shape == (16, cfg.model.text_len, cfg.model.text_dim)
  seen = set()
  for i, index in enumerate(step_mod.batch_indices(cfg, 3)):
    w = int(np.nonzero([np.array_equal(cond["context"][i, 0], row) for row in words.table])[0][0])
    word = cfg.backdrops[w]
    np.testing.assert_array_equal(clips[i], shapes_clip(cfg.data, seed=cfg.data_seed, index=int(index),
                                                        frames=cfg.clip_frames, background=BACKDROPS[word]))
    np.testing.assert_allclose(cond["bg"][i], np.asarray(BACKDROPS[word]) * 2 - 1, atol=1e-6)
    other = [b for b in cfg.backdrops if np.allclose(np.asarray(BACKDROPS[b]) * 2 - 1, cond["bg_before"][i])]
    assert other and other[0] != word
    np.testing.assert_array_equal(cond["before"][i], shapes_clip(
        cfg.data, seed=cfg.data_seed, index=int(index), frames=cfg.clip_frames, background=BACKDROPS[other[0]]))
    seen.add(word)
  assert len(seen) >= 2 and 0 < cond["switch"].sum() < 16
  plain, none = step_mod.train_batch(tiny, 3)
  assert none is None and plain.shape[1:] == clips.shape[1:]


def test_a_switched_clip_shows_the_old_backdrop_on_its_clean_context_only(tiny, monkeypatch):
  """backdrop_switch=1: the model is shown `before` (faded towards the old backdrop with context_fade=1) on the clean
  context frames and the noised target elsewhere, with the prompt's word as text; switch 0 shows the target."""
  import jax.numpy as jnp
  from rf_jax.model import CausalWanDiT
  shown = []

  def record(self, x, t, context, *, chunk_frames=3, local_window_frames=-1):
    shown.append((np.asarray(x, np.float64), np.asarray(t), np.asarray(context)))
    return jnp.zeros_like(x)

  monkeypatch.setattr(CausalWanDiT, "forward_train", record)
  base = dataclasses.replace(tiny, clip_frames=12, backdrops=("black", "green"), self_context=0.0)
  for switch, fade in ((1.0, 0.0), (0.0, 0.0), (1.0, 1.0)):
    cfg = dataclasses.replace(base, backdrop_switch=switch, context_fade=fade, context_fade_min=0.25)
    clips, cond = step_mod.train_batch(cfg, 0)
    params = step_mod.initial_params(cfg)
    for key in (jax.random.key(1), jax.random.key(5)):
      shown.clear()
      cj = jax.tree.map(jnp.asarray, cond)
      step_mod.loss_fn(params, step_mod._graphdef(cfg), cfg, jnp.asarray(clips), key, cj)
      x, t, context = shown[0]
      np.testing.assert_array_equal(context, cond["context"])
      clean = t == 0
      assert clean.any() and (~clean).any()
      want = np.asarray(cond["before"] if switch else clips, np.float64)
      bg = np.asarray(cond["bg_before"] if switch else cond["bg"], np.float64)
      for b, f in zip(*np.nonzero(clean)):
        if not fade:
          np.testing.assert_allclose(x[b, f], want[b, f], atol=1e-6)
        else:
          d = want[b, f] - bg[b]
          a = np.sum((x[b, f] - bg[b]) * d) / np.sum(d * d)
          np.testing.assert_allclose(x[b, f], bg[b] + a * d, atol=1e-5)
      for b, f in zip(*np.nonzero(~clean)):  # noised target frames: correlated with the target, not `before`
        if switch and t[b, f] < 300:
          assert np.abs(x[b, f] - clips[b, f]).mean() < np.abs(x[b, f] - cond["before"][b, f]).mean()


def test_bad_backdrop_settings_are_refused(tiny):
  with pytest.raises(ValueError, match="backdrops"):
    dataclasses.replace(tiny, backdrops=("black", "pink"))
  with pytest.raises(ValueError, match="backdrops"):
    dataclasses.replace(tiny, backdrops="black")
  with pytest.raises(ValueError, match="backdrop_switch"):
    dataclasses.replace(tiny, backdrops=("black",), backdrop_switch=0.5)


def test_a_demo_folder_can_start_a_fine_tune(tmp_path):
  """init = a demo folder (rf_jax/assets/demo's format): the parameters are its tensors."""
  from rf_jax import demo
  from rf_jax.registry import flatten
  tiny = load_train_config(TINY)
  params = step_mod.initial_params(dataclasses.replace(tiny, seed=3))
  demo.write_demo(str(tmp_path / "d"), tiny.model, params, {"frame_hw": [16, 16]})
  got = step_mod.initial_params(dataclasses.replace(tiny, init=str(tmp_path / "d")))
  want = flatten(params)
  for p, v in flatten(got).items():
    np.testing.assert_array_equal(np.asarray(v), np.asarray(want[p]))
