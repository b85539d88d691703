"""Video metrics that need no downloaded weights, on latents or pixels: one jitted function, one number per sample.

    motion_energy              mean over frame pairs of the mean squared frame difference
    flow_magnitude             mean Lucas-Kanade optical-flow magnitude (pixels per frame) over frame pairs
    dynamic_degree             fraction of frame pairs whose strongest flow (mean of the top 5% magnitudes) passes
                               VBench's threshold 6 * min(H, W) / 256: a classical-flow proxy of VBench's
                               RAFT-based dynamic degree
    first_frame_consistency    mean correlation of each later frame with the first
    previous_frame_consistency mean correlation of each frame with the one before it
    drift                      how far the per-channel mean and spread of the last quarter of the video moved from
                               the first quarter's, relative to the first quarter's spread

Correlation is the cosine similarity of mean-centred frames. Frames are [B, T, H, W, C] (channels last: the
rollout's latents, or decoded RGB); flow runs on the channel mean.

`FrameStats` follows one video's RGB frames as they are written (generate's motion.json / motion.png, drawn by
`motion_plot`): per frame, the motion from the previous frame and the colour consistency with the first.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

NAMES = ("motion_energy", "flow_magnitude", "dynamic_degree", "first_frame_consistency",
         "previous_frame_consistency", "drift")


def _box(x: Array, radius: int) -> Array:
  """Sum over a (2r+1)^2 window, edges replicated: [..., H, W] -> [..., H, W]."""
  pad = [(0, 0)] * (x.ndim - 2) + [(radius, radius), (radius, radius)]
  x = jnp.pad(x, pad, mode="edge")
  k = 2 * radius + 1
  h, w = x.shape[-2] - 2 * radius, x.shape[-1] - 2 * radius
  x = sum(x[..., i:i + h, :] for i in range(k))
  return sum(x[..., :, j:j + w] for j in range(k))


def _grad(x: Array, axis: int) -> Array:
  """Central differences (one-sided at the edges) along `axis`."""
  n = x.shape[axis]
  take = lambda a, b: jax.lax.slice_in_dim(x, a, b, axis=axis)  # noqa: E731
  inner = (take(2, n) - take(0, n - 2)) / 2
  return jnp.concatenate([take(1, 2) - take(0, 1), inner, take(n - 1, n) - take(n - 2, n - 1)], axis=axis)


def lucas_kanade(a: Array, b: Array, radius: int = 2) -> tuple[Array, Array]:
  """Dense optical flow from frame a to frame b ([..., H, W] gray): (u, v) in pixels along W and H.

  Least squares on the brightness-constancy equation Ix u + Iy v + It = 0 over a (2r+1)^2 window; where the
  window has no texture (a near-singular system) the flow is 0.
  """
  mid = (a + b) / 2
  ix, iy, it = _grad(mid, -1), _grad(mid, -2), b - a
  sxx, syy, sxy = _box(ix * ix, radius), _box(iy * iy, radius), _box(ix * iy, radius)
  sxt, syt = _box(ix * it, radius), _box(iy * it, radius)
  det = sxx * syy - sxy * sxy
  ok = det > 1e-6 * (sxx + syy) ** 2 + 1e-12
  safe = jnp.where(ok, det, 1.0)
  u = jnp.where(ok, (-syy * sxt + sxy * syt) / safe, 0.0)
  v = jnp.where(ok, (sxy * sxt - sxx * syt) / safe, 0.0)
  return u, v


def _correlation(a: Array, b: Array) -> Array:
  """Cosine similarity of mean-centred frames: [..., H, W, C] x2 -> [...]."""
  axes = (-3, -2, -1)
  a = a - a.mean(axis=axes, keepdims=True)
  b = b - b.mean(axis=axes, keepdims=True)
  num = (a * b).sum(axis=axes)
  den = jnp.sqrt((a * a).sum(axis=axes) * (b * b).sum(axis=axes))
  return jnp.where(den > 0, num / jnp.maximum(den, 1e-30), 1.0)


@functools.partial(jax.jit, static_argnames=("flow_radius",))
def video_metrics(video: Array, flow_radius: int = 2) -> dict[str, Array]:
  """video [B, T, H, W, C] (T >= 2) -> {name: float32 [B]} for every name in NAMES."""
  if video.ndim != 5 or video.shape[1] < 2:
    raise ValueError(f"video has shape {video.shape}; expected [B, T >= 2, H, W, C]")
  x = video.astype(jnp.float32)
  b, t, h, w, _ = x.shape
  diff = x[:, 1:] - x[:, :-1]
  motion = (diff ** 2).mean(axis=(1, 2, 3, 4))

  gray = x.mean(axis=-1)  # [B, T, H, W]
  u, v = lucas_kanade(gray[:, :-1], gray[:, 1:], flow_radius)
  mag = jnp.sqrt(u * u + v * v).reshape(b, t - 1, h * w)
  top = max(1, int(round(0.05 * h * w)))
  strongest = jax.lax.top_k(mag, top)[0].mean(axis=-1)  # [B, T-1]
  threshold = 6.0 * min(h, w) / 256.0

  first = _correlation(x[:, 1:], x[:, :1]).mean(axis=1)
  previous = _correlation(x[:, 1:], x[:, :-1]).mean(axis=1)

  q = max(1, t // 4)

  def stats(frames):  # [B, q, H, W, C] -> per-channel mean and spread [B, C] each
    return frames.mean(axis=(1, 2, 3)), frames.std(axis=(1, 2, 3))

  m0, s0 = stats(x[:, :q])
  m1, s1 = stats(x[:, t - q:])
  scale = jnp.maximum(jnp.sqrt((s0 ** 2).mean(axis=-1)), 1e-12)
  drift = jnp.sqrt((((m1 - m0) ** 2) + ((s1 - s0) ** 2)).mean(axis=-1)) / scale
  return {"motion_energy": motion, "flow_magnitude": mag.mean(axis=(1, 2)),
          "dynamic_degree": (strongest > threshold).mean(axis=1).astype(jnp.float32),
          "first_frame_consistency": first, "previous_frame_consistency": previous, "drift": drift}


class FrameStats:
  """Per-frame statistics of one video, fed its uint8 RGB frames [T, H, W, 3] in order (any number per call).

  motion       mean |frame - previous| / 255
  consistency  colour-histogram (4x4x4 bins) intersection with the first frame
  """

  def __init__(self):
    self.motion: list[float] = []
    self.consistency: list[float] = []
    self._first: np.ndarray | None = None
    self._previous: np.ndarray | None = None

  def update(self, frames: np.ndarray) -> None:
    for frame in np.asarray(frames).astype(np.float32):
      hist = np.histogramdd(frame.reshape(-1, 3), bins=(4, 4, 4), range=((0, 256),) * 3)[0].ravel()
      hist /= hist.sum()
      if self._first is None:
        self._first = hist
      else:
        self.motion.append(float(np.abs(frame - self._previous).mean() / 255))
        self.consistency.append(float(np.minimum(hist, self._first).sum()))
      self._previous = frame

  def to_dict(self) -> dict[str, list[float]]:
    return {"motion": self.motion, "consistency": self.consistency}


def motion_plot(stats: dict[int, FrameStats], fps: int, path: str, markers: list[float] = ()) -> None:
  """Per-frame motion and colour consistency of each sample over time, as a PNG; `markers`: times (seconds) drawn
  as dashed lines (the prompt switches)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(2, 1, figsize=(7, 4.5), dpi=100, sharex=True)
  for k, st in sorted(stats.items()):
    t = np.arange(1, len(st.motion) + 1) / fps
    axes[0].plot(t, st.motion, lw=0.8, label=f"sample {k}")
    axes[1].plot(t, st.consistency, lw=0.8)
  axes[0].set_ylabel("motion\n(mean |Δframe|)")
  axes[1].set_ylabel("colour consistency\nwith frame 0")
  axes[1].set_xlabel("seconds")
  axes[1].set_ylim(0, 1.02)
  for ax in axes:
    ax.grid(alpha=0.3)
    for m in markers:
      ax.axvline(m, color="k", ls="--", lw=0.8)
  if markers:
    axes[0].text(markers[0], axes[0].get_ylim()[1], " prompt switch", fontsize=7, va="top")
  if len(stats) > 1:
    axes[0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
