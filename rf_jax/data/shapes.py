"""Bouncing shapes: a synthetic video dataset made by the code itself, deterministic from a seed.

Each clip has 1 to `max_shapes` shapes (disc, square, triangle, ring), each with its own colour, size and velocity
for the whole clip, moving in straight lines and bouncing off the frame's walls, drawn with anti-aliased edges over
a dark background; later shapes are drawn over earlier ones. Identity persists (a shape never changes colour,
size or kind) and motion never stops, so both long-range consistency and motion are measurable.

    clip = shapes_clip(ShapesConfig(), seed=0, index=7)     # float32 [T, H, W, 3] in [-1, 1]
    blue = shapes_clip(ShapesConfig(), seed=0, index=7, background=BACKDROPS["blue"])   # the same shapes on blue

The backdrops are the conditional demo's prompts (configs/train/demo_backdrop.py): a clip's shapes do not depend on
its background colour.

The same (seed, index) gives the same clip on every machine: all randomness comes from numpy's Philox generator
keyed by both.
"""

from __future__ import annotations

import dataclasses

import numpy as np

KINDS = ("disc", "square", "triangle", "ring")
BACKDROPS = {"black": (0.08, 0.08, 0.12), "blue": (0.06, 0.16, 0.38), "green": (0.06, 0.28, 0.12),
             "red": (0.36, 0.07, 0.08), "purple": (0.24, 0.08, 0.32)}  # dark, so every shape colour stands out
PALETTE = np.array([[0.95, 0.25, 0.2], [0.2, 0.6, 0.95], [0.95, 0.85, 0.2], [0.3, 0.85, 0.35],
                    [0.85, 0.4, 0.9], [0.95, 0.6, 0.2], [0.9, 0.9, 0.9]], np.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShapesConfig:
  size: int = 32  # frames are size x size
  frames: int = 48
  max_shapes: int = 3
  radius: tuple[float, float] = (3.5, 7.0)  # shape half-size in pixels
  speed: tuple[float, float] = (0.4, 1.2)  # pixels per frame
  background: tuple[float, float, float] = (0.08, 0.08, 0.12)

  def __post_init__(self):
    if self.size < 8 or self.frames < 1 or self.max_shapes < 1:
      raise ValueError(f"ShapesConfig: size {self.size} >= 8, frames {self.frames} >= 1 and max_shapes "
                       f"{self.max_shapes} >= 1 are needed")
    if not 0 < self.radius[0] <= self.radius[1] < self.size / 2:
      raise ValueError(f"ShapesConfig.radius={self.radius} must satisfy 0 < lo <= hi < size / 2")


def _rng(seed: int, index: int) -> np.random.Generator:
  return np.random.Generator(np.random.Philox(key=[seed & 0xFFFFFFFFFFFFFFFF, index & 0xFFFFFFFFFFFFFFFF]))


def _coverage(kind: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
  """Anti-aliased coverage in [0, 1] of a shape of half-size r centred at the origin ([..., H, W] offsets)."""
  if kind == "disc":
    d = np.sqrt(dx * dx + dy * dy) - r
  elif kind == "square":
    d = np.maximum(np.abs(dx), np.abs(dy)) - r * 0.85
  elif kind == "ring":
    d = np.abs(np.sqrt(dx * dx + dy * dy) - r * 0.75) - r * 0.3
  else:  # an upward triangle: the largest signed distance to its three edges
    k = np.sqrt(3.0)
    e1 = (k * dx - dy) / 2 - r * 0.5
    e2 = (-k * dx - dy) / 2 - r * 0.5
    e3 = dy - r * 0.5
    d = np.maximum(np.maximum(e1, e2), e3) * 1.2
  return np.clip(0.5 - d, 0.0, 1.0)


def _trajectory(start: float, velocity: float, lo: float, hi: float, t: np.ndarray) -> np.ndarray:
  """Positions of a point bouncing elastically between lo and hi (reflection of the free motion)."""
  span = hi - lo
  x = (start - lo + velocity * t) % (2 * span)
  return lo + np.where(x > span, 2 * span - x, x)


def shapes_clip(config: ShapesConfig, *, seed: int, index: int, start_frame: int = 0,
                frames: int | None = None, background=None) -> np.ndarray:
  """Clip `index` of the dataset `seed`: float32 [frames, size, size, 3] in [-1, 1], from `start_frame` of its
  (endless) motion, over `background` (RGB in [0, 1]; default config.background)."""
  frames = config.frames if frames is None else frames
  rng = _rng(seed, index)
  n = int(rng.integers(1, config.max_shapes + 1))
  s = config.size
  t = np.arange(start_frame, start_frame + frames, dtype=np.float64)
  yy, xx = np.meshgrid(np.arange(s, dtype=np.float64) + 0.5, np.arange(s, dtype=np.float64) + 0.5, indexing="ij")
  bg = config.background if background is None else background
  video = np.broadcast_to(np.asarray(bg, np.float32), (frames, s, s, 3)).copy()
  colours = rng.permutation(len(PALETTE))[:n]
  for k in range(n):
    kind = KINDS[int(rng.integers(len(KINDS)))]
    r = float(rng.uniform(*config.radius))
    speed = float(rng.uniform(*config.speed))
    angle = float(rng.uniform(0, 2 * np.pi))
    x0, y0 = rng.uniform(r, s - r, size=2)
    cx = _trajectory(x0, speed * np.cos(angle), r, s - r, t)[:, None, None]  # [T, 1, 1]
    cy = _trajectory(y0, speed * np.sin(angle), r, s - r, t)[:, None, None]
    alpha = _coverage(kind, xx[None] - cx, yy[None] - cy, r)[..., None].astype(np.float32)  # [T, H, W, 1]
    video = video * (1 - alpha) + PALETTE[colours[k % len(PALETTE)]] * alpha
  return (video * 2 - 1).astype(np.float32)


def shapes_batch(config: ShapesConfig, *, seed: int, indices, frames: int | None = None) -> np.ndarray:
  """[len(indices), frames (default config.frames), H, W, 3]: the first frames of each clip."""
  return np.stack([shapes_clip(config, seed=seed, index=int(i), frames=frames) for i in indices])


def shape_curves(videos: np.ndarray, background=ShapesConfig.background) -> dict[str, np.ndarray]:
  """Per-frame measures of a bouncing-shapes video (the dataset's or a model's), videos [B, T, H, W, 3] in [-1, 1],
  over `background` (RGB in [0, 1]: [3], or each frame's [B, T, 3]):

    motion       [B, T-1] mean |frame - previous frame| on [0, 1] pixels: is it still moving?
    foreground   [B, T]   fraction of pixels farther than 0.25 (on [0, 1]) from the background colour
    consistency  [B, T]   how much of frame 0's shapes' colours is still there: the histogram (4 levels per channel)
                          of foreground pixels, intersected with frame 0's and divided by frame 0's foreground count.
                          1 when every colour keeps at least its pixels; it falls as shapes shrink, fade, vanish or
                          change colour (new colours do not raise it); about 0.85 for the dataset's clips, where
                          shapes pass over each other and anti-aliased edges change bins as they move.
  """
  px = (np.clip(np.asarray(videos, np.float32), -1, 1) + 1) / 2
  bg = np.asarray(background, np.float32)
  bg = bg[:, :, None, None, :] if bg.ndim == 3 else bg  # per frame: [B, T, 1, 1, 3]
  fg = np.abs(px - bg).max(-1) > 0.25  # [B, T, H, W]
  q = np.minimum((px * 4).astype(np.int32), 3)
  codes = np.where(fg, q[..., 0] * 16 + q[..., 1] * 4 + q[..., 2], 64)  # 64: background
  b, t = codes.shape[:2]
  frame_offset = 65 * np.arange(b * t).reshape(b, t, 1, 1)  # one bincount for all frames: bins 65 f .. 65 f + 64
  hist = np.bincount((codes + frame_offset).ravel(), minlength=65 * b * t).reshape(b, t, 65)
  hist = hist[..., :64].astype(np.float32)
  consistency = np.minimum(hist, hist[:, :1]).sum(-1) / np.maximum(hist[:, :1].sum(-1), 1.0)
  return {"motion": np.abs(np.diff(px, axis=1)).mean(axis=(2, 3, 4)), "foreground": fg.mean(axis=(2, 3)),
          "consistency": consistency}
