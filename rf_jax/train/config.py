"""Typed, frozen training configuration. A training config file is Python defining `TRAIN = TrainConfig(...)`
(configs/train/)."""

from __future__ import annotations

import dataclasses
from typing import Any

from rf_jax.config import ComputeDtype, ModelConfig, load_python_value
from rf_jax.data.shapes import BACKDROPS, ShapesConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
  """AdamW with linear warm-up then cosine decay to `end_lr_ratio * lr`, after global-norm clipping."""
  lr: float = 3e-4
  warmup_steps: int = 100
  end_lr_ratio: float = 0.1
  weight_decay: float = 0.01
  b1: float = 0.9
  b2: float = 0.99
  clip_norm: float = 1.0

  def __post_init__(self):
    if not self.lr > 0 or self.warmup_steps < 0 or not 0 <= self.end_lr_ratio <= 1 or not self.clip_norm > 0:
      raise ValueError(f"OptimConfig: lr > 0, warmup_steps >= 0, 0 <= end_lr_ratio <= 1 and clip_norm > 0 are "
                       f"needed (got {self})")


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  """What `rf-jax train` runs.

  The model sees clips of `clip_frames` frames of the bouncing-shapes dataset in pixel space (in_dim = out_dim = 3),
  block-causally in chunks of `chunk_frames`: the chunks before a random frontier are clean context (no loss), the
  others each at its own timestep drawn uniformly from the flow schedule's table (`shift`). The loss is an MSE on
  the noisy chunks, of the flow (`loss="flow"`, the flow-matching loss) or of the clean-sample estimate
  x0_hat = x_t - sigma * flow divided by max(sigma, `x0_loss_sigma_floor`) (`loss="x0"`: the flow loss at sigmas
  above the floor, the clean-sample error weighted 1 / floor^2 below; floor 1 is the plain x0 MSE, which favours
  the high noise levels that lay out a frame, a lower floor gives the fine detail of low sigmas more weight). Small
  pixel-space models learn far better with `model.prediction="x0"` and `loss="x0"` (README, The demo model).

  self_context: the fraction of clips whose clean context frames show the model's own one-step reconstruction of a
    copy noised to a sigma drawn uniformly in `self_context_sigma` (against exposure bias; 0 = off; costs one more
    forward pass per step).
  context_fade: the fraction of clips whose clean context frames are faded towards the background colour,
    bg + a (frame - bg), each frame by its own a drawn uniformly in [`context_fade_min`, 1] (0 = off). A rollout's
    shapes fade a little with every chunk it conditions on its own output; shown faded context with full-strength
    targets, the model learns to restore them instead of fading further (README, The demo model).
  backdrops: the prompts of a conditional model (names in rf_jax.data.shapes.BACKDROPS; () = unconditional, zero
    text): each clip is drawn over one of them, chosen per clip, and the model reads that word
    (`rf_jax.text.words.WordEncoder.fixed(backdrops, model.text_dim)`) as its text.
  backdrop_switch: the fraction of such clips whose clean context frames show another backdrop than the prompt's:
    a prompt switch at the frontier, as a rollout sees it after a switch (the memory re-cached under the new prompt
    still shows the old background). The noisy chunks and the target keep the prompt's backdrop.
  init: a DiT checkpoint (rf_jax.dit, e.g. an earlier run's model/) or a demo folder (rf_jax/assets/demo) to start
    from instead of a random initialisation (fine-tuning); its config must equal `model`.
  """
  model: ModelConfig
  data: ShapesConfig = ShapesConfig()
  optim: OptimConfig = OptimConfig()
  steps: int = 1000
  batch: int = 8
  clip_frames: int = 12
  chunk_frames: int = 3
  shift: float = 3.0
  loss: str = "flow"
  x0_loss_sigma_floor: float = 1.0
  ema_decay: float = 0.995
  compute_dtype: str = "float32"
  seed: int = 0  # parameters and noise
  data_seed: int = 0  # the dataset
  save_every: int = 200
  keep: int = 3
  log_every: int = 10
  self_context: float = 0.0
  self_context_sigma: tuple[float, float] = (0.2, 0.6)
  context_fade: float = 0.0
  context_fade_min: float = 0.3
  backdrops: tuple[str, ...] = ()
  backdrop_switch: float = 0.0
  init: str | None = None

  def __post_init__(self):
    m = self.model
    if m.in_dim != 3 or m.out_dim != 3:
      raise ValueError(f"TrainConfig.model: the shapes dataset is RGB pixels; in_dim and out_dim must be 3 (got "
                       f"{m.in_dim}, {m.out_dim})")
    _, ph, pw = m.patch_size
    if self.data.size % ph or self.data.size % pw:
      raise ValueError(f"TrainConfig: frame size {self.data.size} is not a multiple of the patch {m.patch_size}")
    if self.clip_frames % self.chunk_frames or self.clip_frames > self.data.frames:
      raise ValueError(f"TrainConfig.clip_frames={self.clip_frames} must be a multiple of chunk_frames="
                       f"{self.chunk_frames} and at most data.frames={self.data.frames}")
    if self.steps < 1 or self.batch < 1 or self.save_every < 1 or self.keep < 1 or self.log_every < 1:
      raise ValueError("TrainConfig: steps, batch, save_every, keep and log_every must be positive")
    if not 0 <= self.ema_decay < 1:
      raise ValueError(f"TrainConfig: 0 <= ema_decay < 1 (got {self.ema_decay})")
    lo, hi = self.self_context_sigma
    if not 0 <= self.self_context <= 1 or not 0 < lo <= hi <= 1:
      raise ValueError(f"TrainConfig: 0 <= self_context <= 1 and 0 < self_context_sigma[0] <= [1] <= 1 are needed "
                       f"(got {self.self_context}, {self.self_context_sigma})")
    if not 0 <= self.context_fade <= 1 or not 0 <= self.context_fade_min <= 1:
      raise ValueError(f"TrainConfig: 0 <= context_fade <= 1 and 0 <= context_fade_min <= 1 are needed (got "
                       f"{self.context_fade}, {self.context_fade_min})")
    unknown = [b for b in self.backdrops if b not in BACKDROPS]
    if unknown or len(set(self.backdrops)) != len(self.backdrops) or isinstance(self.backdrops, str):
      raise ValueError(f"TrainConfig.backdrops={self.backdrops!r}: a tuple of distinct names from "
                       f"{', '.join(BACKDROPS)}")
    if not 0 <= self.backdrop_switch <= 1 or (self.backdrop_switch and len(self.backdrops) < 2):
      raise ValueError(f"TrainConfig.backdrop_switch={self.backdrop_switch}: in [0, 1], and a switch needs at least "
                       "two backdrops")
    if self.loss not in ("flow", "x0"):
      raise ValueError(f"TrainConfig.loss={self.loss!r}; expected 'flow' or 'x0'")
    if not 0 < self.x0_loss_sigma_floor <= 1:
      raise ValueError(f"TrainConfig.x0_loss_sigma_floor={self.x0_loss_sigma_floor} must be in (0, 1]")
    if self.compute_dtype not in {d.value for d in ComputeDtype}:
      raise ValueError(f"TrainConfig.compute_dtype={self.compute_dtype!r}; expected float32 or bfloat16")

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["model"] = self.model.to_dict()
    return d


def load_train_config(path: str) -> TrainConfig:
  """Runs the config file and returns its `TRAIN`."""
  return load_python_value(path, "TRAIN", TrainConfig, what="training config",
                           expected="TRAIN = rf_jax.train.TrainConfig(...)")
