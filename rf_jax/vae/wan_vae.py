"""The Wan2.1 video VAE in Flax NNX (Wan's `wan/modules/vae.py`, `WanVAE_`), channels last: [B, T, H, W, C].

The reference runs its convolutions chunk by chunk with a 2-frame feature cache. That equals one pass over the whole
sequence in which every causal convolution pads 2 zero frames in front (fixtures' README §3.3), which is what the
encoder does here. The decoder runs on a `Stream`: each causal convolution takes the last 2 frames it saw from the
stream instead of zeros, so decoding a video chunk by chunk (`Decoder.step`, during the rollout) gives the same frames
as decoding it whole, and the reference's chunked decode.

Temporal resampling (the only places frames are not independent beyond the convolutions):
  downsample3d   frame 0 is kept; then a stride-2 convolution over windows (0,1,2), (2,3,4), ...   T -> 1 + (T-1)/2
  upsample3d     frame 0 is kept and is not history of later frames; frames 1.. go through a causal conv to 2C
                 channels, split into two frames each                                              T -> 1 + 2(T-1)
Letters: B batch, T frames, H, W size, C channels.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array

MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632,
        -0.1922, -0.9497, 0.2503, -0.2921)
STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382,
       1.1253, 2.8251, 1.9160)


@dataclasses.dataclass(frozen=True, kw_only=True)
class VAEConfig:
  dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temporal_downsample: tuple[bool, ...] = (False, True, True)

  def __post_init__(self):
    object.__setattr__(self, "dim_mult", tuple(self.dim_mult))
    object.__setattr__(self, "temporal_downsample", tuple(self.temporal_downsample))
    if len(self.temporal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(f"VAEConfig.temporal_downsample has {len(self.temporal_downsample)} entries; "
                       f"dim_mult {self.dim_mult} needs {len(self.dim_mult) - 1}")
    if self.z_dim != len(MEAN):
      raise ValueError(f"VAEConfig.z_dim={self.z_dim}: the latent statistics are for {len(MEAN)} channels")

  @property
  def temporal_stride(self) -> int:
    return 2 ** sum(self.temporal_downsample)

  @property
  def spatial_stride(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], *, source: str = "vae config") -> "VAEConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"{source}: unknown VAE config keys {unknown}")
    return cls(**d)


WAN21_VAE = VAEConfig()
VAE_TINY = VAEConfig(dim=8)
PRESETS = {"wan2.1-vae": WAN21_VAE, "vae-tiny": VAE_TINY}


class Stream:
  """Frame history of the decoder's causal convolutions, in call order: `take` gives a convolution the last 2
  frames of its input so far (zeros at the start), `put` records the new ones."""

  def __init__(self, history: list[Array] | None = None):
    self.history = history
    self.out: list[Array] = []
    self._i = 0

  def take(self, like: Array) -> Array:
    if self.history is None:
      return jnp.zeros((like.shape[0], 2, *like.shape[2:]), like.dtype)
    h = self.history[self._i]
    self._i += 1
    return h

  def put(self, frames: Array) -> None:
    self.out.append(frames)


def _conv(x: Array, kernel: Array, bias: Array | None, *, stride=(1, 1, 1), pad_hw: int = 0) -> Array:
  """x [B, T, H, W, Ci], kernel [kt, kh, kw, Ci, Co] -> [B, T', H', W', Co] with no temporal padding."""
  y = jax.lax.conv_general_dilated(x, kernel.astype(x.dtype), stride, [(0, 0), (pad_hw, pad_hw), (pad_hw, pad_hw)],
                                   dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                                   preferred_element_type=jnp.float32)
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return y.astype(x.dtype)


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], dtype, scale: float) -> Array:
  """scale * N(0, 1) of `shape` for random (untrained) weights, drawn on the host from the next params key.

  XLA on CPU compiles each jax.random.normal shape for about a second, and the VAE has 56 of them; numpy draws
  them at once. Under nnx.eval_shape (a traced key) only the shape matters.
  """
  key = rngs.params()
  try:
    seed = np.asarray(jax.random.key_data(key)).ravel()
  except jax.errors.TracerArrayConversionError:
    return jax.random.normal(key, shape, dtype) * scale
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, np.float32) * scale, dtype)


class CausalConv3d(nnx.Module):
  """Conv3d padded causally in time (the front only) and symmetrically in space."""

  def __init__(self, cin: int, cout: int, kernel=(3, 3, 3), *, stride=(1, 1, 1), causal: bool = True,
               param_dtype=jnp.float32, rngs: nnx.Rngs):
    kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
    fan_in = cin * kernel[0] * kernel[1] * kernel[2]
    self.kernel = nnx.Param(_normal(rngs, (*kernel, cin, cout), param_dtype, fan_in**-0.5))
    self.bias = nnx.Param(jnp.zeros((cout,), param_dtype))
    self.stride = tuple(stride)
    self.causal = causal  # False: the downsampling time_conv (no padding at all)

  def __call__(self, x: Array, stream: Stream | None = None) -> Array:
    kt, kh, _ = self.kernel.shape[:3]
    if self.causal and kt > 1:
      history = stream.take(x) if stream is not None else jnp.zeros((x.shape[0], kt - 1, *x.shape[2:]), x.dtype)
      x = jnp.concatenate([history.astype(x.dtype), x], axis=1)
      if stream is not None:
        stream.put(x[:, -(kt - 1):])
    return _conv(x, self.kernel[...], self.bias[...], stride=self.stride, pad_hw=(kh - 1) // 2)


class RMSNorm(nnx.Module):
  """x / max(||x|| over channels, 1e-12) * sqrt(C) * gamma (Wan's RMS_norm; no bias)."""

  def __init__(self, dim: int, *, param_dtype=jnp.float32):
    self.gamma = nnx.Param(jnp.ones((dim,), param_dtype))

  def __call__(self, x: Array) -> Array:
    x32 = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True))
    y = x32 / jnp.maximum(norm, 1e-12) * (x.shape[-1] ** 0.5) * self.gamma[...].astype(jnp.float32)
    return y.astype(x.dtype)


class ResidualBlock(nnx.Module):
  def __init__(self, cin: int, cout: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.norm1 = RMSNorm(cin, param_dtype=param_dtype)  # residual.0
    self.conv1 = CausalConv3d(cin, cout, 3, param_dtype=param_dtype, rngs=rngs)  # residual.2
    self.norm2 = RMSNorm(cout, param_dtype=param_dtype)  # residual.3
    self.conv2 = CausalConv3d(cout, cout, 3, param_dtype=param_dtype, rngs=rngs)  # residual.6
    self.shortcut = CausalConv3d(cin, cout, 1, param_dtype=param_dtype, rngs=rngs) if cin != cout else None

  def __call__(self, x: Array, stream: Stream | None = None) -> Array:
    h = x if self.shortcut is None else self.shortcut(x)
    x = self.conv1(jax.nn.silu(self.norm1(x)), stream)
    x = self.conv2(jax.nn.silu(self.norm2(x)), stream)
    return x + h


class AttentionBlock(nnx.Module):
  """Single-head self-attention over each frame's H*W positions, scale 1/sqrt(C)."""

  def __init__(self, dim: int, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.norm = RMSNorm(dim, param_dtype=param_dtype)
    self.to_qkv = nnx.Linear(dim, 3 * dim, param_dtype=param_dtype, rngs=rngs)
    self.proj = nnx.Linear(dim, dim, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: Array, stream: Stream | None = None) -> Array:
    b, t, h, w, c = x.shape
    qkv = self.to_qkv(self.norm(x)).reshape(b * t, h * w, 3 * c)
    q, k, v = jnp.split(qkv, 3, axis=-1)  # [B*T, HW, C] each
    logits = jnp.einsum("bic,bjc->bij", q, k, preferred_element_type=jnp.float32) / c**0.5
    out = jnp.einsum("bij,bjc->bic", jax.nn.softmax(logits, axis=-1).astype(v.dtype), v)
    return self.proj(out).reshape(b, t, h, w, c) + x


class Resample(nnx.Module):
  """Spatial x2 up (nearest + 3x3 conv to C/2) or down (pad right/bottom + stride-2 3x3 conv), with the temporal
  part of the 3-D modes (`time_conv`)."""

  def __init__(self, dim: int, mode: str, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.mode = mode
    up = mode.startswith("upsample")
    cout = dim // 2 if up else dim
    self.resample = nnx.Param(_normal(rngs, (3, 3, dim, cout), param_dtype, (9 * dim) ** -0.5))
    self.resample_bias = nnx.Param(jnp.zeros((cout,), param_dtype))
    if mode == "upsample3d":
      self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), param_dtype=param_dtype, rngs=rngs)
    elif mode == "downsample3d":
      self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), causal=False, param_dtype=param_dtype,
                                    rngs=rngs)
    else:
      self.time_conv = None

  def __call__(self, x: Array, stream: Stream | None = None, *, first: bool = True) -> Array:
    """first: the chunk holds the video's frame 0 (always, outside streaming)."""
    if self.mode == "upsample3d":
      x = self._time_up(x, stream, first)
    b, t, h, w, c = x.shape
    kernel = self.resample[...][None]  # [1, 3, 3, Ci, Co]
    if self.mode.startswith("upsample"):
      x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
      x = _conv(x, kernel, self.resample_bias[...], pad_hw=1)
    else:
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1), (0, 0)))
      x = _conv(x, kernel, self.resample_bias[...], stride=(1, 2, 2))
    if self.mode == "downsample3d":
      # Frame 0 kept; stride-2 windows (0,1,2), (2,3,4), ... over all frames.
      x = jnp.concatenate([x[:, :1], self.time_conv(x)], axis=1) if t > 1 else x
    return x

  def _time_up(self, x: Array, stream: Stream | None, first: bool) -> Array:
    b, t, h, w, c = x.shape
    head, rest = (x[:, :1], x[:, 1:]) if first else (x[:, :0], x)
    if rest.shape[1] == 0:  # only frame 0: nothing enters the history (it stays zero)
      if stream is not None:
        stream.put(stream.take(x))
      return head
    y = self.time_conv(rest, stream)  # [B, T', H, W, 2C]
    n = rest.shape[1]
    y = y.reshape(b, n, h, w, 2, c).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * n, h, w, c)  # (t g0, t g1, ...)
    return jnp.concatenate([head, y], axis=1)


def _run(layers, x: Array, stream: Stream | None, first: bool) -> Array:
  for layer in layers:
    x = layer(x, stream, first=first) if isinstance(layer, Resample) else layer(x, stream)
  return x


class Encoder(nnx.Module):
  def __init__(self, cfg: VAEConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
    dims = [cfg.dim * u for u in (1, *cfg.dim_mult)]
    self.conv1 = CausalConv3d(3, dims[0], 3, param_dtype=param_dtype, rngs=rngs)
    layers = []
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
      for _ in range(cfg.num_res_blocks):
        layers.append(ResidualBlock(cin, cout, param_dtype=param_dtype, rngs=rngs))
        cin = cout
      if i != len(cfg.dim_mult) - 1:
        mode = "downsample3d" if cfg.temporal_downsample[i] else "downsample2d"
        layers.append(Resample(cout, mode, param_dtype=param_dtype, rngs=rngs))
    self.downsamples = nnx.List(layers)
    self.middle = nnx.List([ResidualBlock(cout, cout, param_dtype=param_dtype, rngs=rngs),
                            AttentionBlock(cout, param_dtype=param_dtype, rngs=rngs),
                            ResidualBlock(cout, cout, param_dtype=param_dtype, rngs=rngs)])
    self.head_norm = RMSNorm(cout, param_dtype=param_dtype)
    self.head_conv = CausalConv3d(cout, 2 * cfg.z_dim, 3, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: Array) -> Array:
    """pixels [B, 1 + 4k, H, W, 3] -> [B, 1 + k, H/8, W/8, 2 z_dim]."""
    x = self.conv1(x)
    for i, layer in enumerate(self.downsamples):
      x = layer(x)
      self.sow(nnx.Intermediate, f"down{i}", x, capture_noop=True)
    x = _run(self.middle, x, None, True)
    self.sow(nnx.Intermediate, "middle", x, capture_noop=True)
    return self.head_conv(jax.nn.silu(self.head_norm(x)))


class Decoder(nnx.Module):
  def __init__(self, cfg: VAEConfig, *, param_dtype=jnp.float32, rngs: nnx.Rngs):
    dims = [cfg.dim * u for u in (cfg.dim_mult[-1], *cfg.dim_mult[::-1])]
    temporal_up = cfg.temporal_downsample[::-1]
    self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, param_dtype=param_dtype, rngs=rngs)
    self.middle = nnx.List([ResidualBlock(dims[0], dims[0], param_dtype=param_dtype, rngs=rngs),
                            AttentionBlock(dims[0], param_dtype=param_dtype, rngs=rngs),
                            ResidualBlock(dims[0], dims[0], param_dtype=param_dtype, rngs=rngs)])
    layers = []
    for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
      if i in (1, 2, 3):
        cin = cin // 2
      for _ in range(cfg.num_res_blocks + 1):
        layers.append(ResidualBlock(cin, cout, param_dtype=param_dtype, rngs=rngs))
        cin = cout
      if i != len(cfg.dim_mult) - 1:
        mode = "upsample3d" if temporal_up[i] else "upsample2d"
        layers.append(Resample(cout, mode, param_dtype=param_dtype, rngs=rngs))
    self.upsamples = nnx.List(layers)
    self.head_norm = RMSNorm(cout, param_dtype=param_dtype)
    self.head_conv = CausalConv3d(cout, 3, 3, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: Array, stream: Stream | None = None, *, first: bool = True) -> Array:
    """[B, T, h, w, z_dim] (after conv2) -> pixels [B, 1 + 4(T-1) (first) or 4T, 8h, 8w, 3], unclamped."""
    x = self.conv1(x, stream)
    x = _run(self.middle, x, stream, first)
    self.sow(nnx.Intermediate, "middle", x, capture_noop=True)
    for i, layer in enumerate(self.upsamples):
      x = layer(x, stream, first=first) if isinstance(layer, Resample) else layer(x, stream)
      self.sow(nnx.Intermediate, f"up{i}", x, capture_noop=True)
    return self.head_conv(jax.nn.silu(self.head_norm(x)), stream)


class WanVAE(nnx.Module):
  """Encoder, decoder and the latent normalisation (the 16-channel mean/std). Latents are normalised:
  encode -> (mu - mean) * (1/std); decode <- z / (1/std) + mean, as Wan computes them."""

  def __init__(self, config: VAEConfig = WAN21_VAE, *, dtype=jnp.float32, param_dtype=jnp.float32,
               rngs: nnx.Rngs):
    self.config = config
    self.dtype = dtype
    self.encoder = Encoder(config, param_dtype=param_dtype, rngs=rngs)
    self.conv1 = CausalConv3d(2 * config.z_dim, 2 * config.z_dim, 1, param_dtype=param_dtype, rngs=rngs)
    self.conv2 = CausalConv3d(config.z_dim, config.z_dim, 1, param_dtype=param_dtype, rngs=rngs)
    self.decoder = Decoder(config, param_dtype=param_dtype, rngs=rngs)

  @staticmethod
  def _stats():
    mean = jnp.asarray(MEAN, jnp.float32)
    return mean, 1.0 / jnp.asarray(STD, jnp.float32)

  def encode(self, video: Array) -> Array:
    """pixels in [-1, 1], [B, 1 + 4k, H, W, 3] -> normalised latents (the mean) [B, 1 + k, H/8, W/8, z_dim]."""
    t = video.shape[1]
    if (t - 1) % self.config.temporal_stride:
      raise ValueError(f"video has {t} frames; the VAE encodes 1 + {self.config.temporal_stride}k")
    out = self.encoder(video.astype(self.dtype))
    mu = self.conv1(out)[..., :self.config.z_dim].astype(jnp.float32)
    mean, inv_std = self._stats()
    return (mu - mean) * inv_std

  def decode(self, z: Array) -> Array:
    """normalised latents [B, T, h, w, z_dim] -> pixels [B, 1 + 4(T-1), 8h, 8w, 3], unclamped."""
    return self.decode_stream(z, None, first=True)[0]

  def init_stream(self, z_shape: tuple[int, ...]) -> list[Array]:
    """The decoder's zero history for latent chunks of shape [B, F, h, w, z_dim] (a fixed-shape pytree)."""
    def run(z):
      return self.decode_stream(z, None, first=True)[1]
    return jax.tree.map(jnp.zeros_like, jax.eval_shape(run, jnp.zeros(z_shape, jnp.float32)))

  def decode_stream(self, z: Array, history: list[Array] | None, *, first: bool) -> tuple[Array, list[Array]]:
    """One chunk of latents with the decoder's history -> (pixels, new history). `first`: the chunk starts the
    video (it then gives 1 + 4(F-1) frames, later chunks 4F). Chunks decoded in order equal `decode` of all."""
    mean, inv_std = self._stats()
    x = self.conv2((z.astype(jnp.float32) / inv_std + mean).astype(self.dtype))
    stream = Stream(history)
    out = self.decoder(x, stream, first=first)
    return out.astype(jnp.float32), stream.out
