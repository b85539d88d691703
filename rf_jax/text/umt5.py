"""The umT5 text encoder Wan2.1 conditions on, in Flax NNX (Wan's `wan/modules/t5.py`, `umt5_xxl(encoder_only=True)`).

    x = token_embedding(ids)                                        [B, L, D]
    per block:  x += o(attn(norm1(x), mask, bias_l))                 attention logits q.k^T, NOT scaled by 1/sqrt(d)
                x += fc2(fc1(h) * gelu_tanh(gate(h))),  h = norm2(x)
    out = norm(x)                                                   T5 RMSNorm: w * x * rsqrt(mean(x^2) + eps)

Each block has its own relative-position bias table [32 buckets, heads] (umT5: `shared_pos=False`); keys where the
mask is 0 get the bias float32.min, so they take no weight; padded query rows are computed like any other. Wan then
zeroes every row past a prompt's length (`wan_embeddings`) and the DiT pads to `text_len` rows.

Letters: B batch, L tokens, D width, N heads, H head dim, F FFN width.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rf_jax.model.layers import RMSNorm, gelu_tanh

Array = jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class UMT5Config:
  vocab: int = 256384
  dim: int = 4096
  dim_attn: int = 4096
  dim_ffn: int = 10240
  num_heads: int = 64
  num_layers: int = 24
  num_buckets: int = 32
  max_dist: int = 128
  eps: float = 1e-6
  text_len: int = 512  # tokens per prompt (truncation and padding)
  pad_id: int = 0
  eos_id: int = 1

  def __post_init__(self):
    for name in ("vocab", "dim", "dim_attn", "dim_ffn", "num_heads", "num_layers", "num_buckets", "max_dist",
                 "text_len"):
      if getattr(self, name) < 1:
        raise ValueError(f"UMT5Config.{name}={getattr(self, name)} must be positive")
    if self.dim_attn % self.num_heads:
      raise ValueError(f"UMT5Config.dim_attn={self.dim_attn} is not divisible by num_heads={self.num_heads}")
    if self.num_buckets % 2:
      raise ValueError(f"UMT5Config.num_buckets={self.num_buckets} must be even (bidirectional buckets)")

  @property
  def head_dim(self) -> int:
    return self.dim_attn // self.num_heads

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any], *, source: str = "umt5 config") -> "UMT5Config":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"{source}: unknown umT5 config keys {unknown}")
    return cls(**d)

  @classmethod
  def from_constructor_args(cls, args: Mapping[str, Any], *, source: str = "constructor_args") -> "UMT5Config":
    """Wan's `T5Encoder(vocab, dim, dim_attn, dim_ffn, num_heads, num_layers, num_buckets, shared_pos, dropout)`."""
    if args.get("shared_pos", False):
      raise ValueError(f"{source}: shared_pos=True (one bias table for all blocks) is not umT5; not supported")
    need = ("vocab", "dim", "dim_attn", "dim_ffn", "num_heads", "num_layers")
    missing = [k for k in need if k not in args]
    if missing:
      raise ValueError(f"{source}: missing T5Encoder arguments {missing}")
    return cls(vocab=int(args["vocab"]), dim=int(args["dim"]), dim_attn=int(args["dim_attn"]),
               dim_ffn=int(args["dim_ffn"]), num_heads=int(args["num_heads"]), num_layers=int(args["num_layers"]),
               num_buckets=int(args.get("num_buckets", 32)))


UMT5_XXL = UMT5Config()
UMT5_TINY = UMT5Config(vocab=259, dim=64, dim_attn=64, dim_ffn=128, num_heads=4, num_layers=2, text_len=32)
PRESETS = {"umt5-xxl": UMT5_XXL, "umt5-tiny": UMT5_TINY}  # tiny: vocab of the built-in byte tokenizer


def relative_buckets(q_len: int, k_len: int, num_buckets: int = 32, max_dist: int = 128) -> np.ndarray:
  """int32 [q_len, k_len]: T5's bidirectional bucket of (key position - query position), computed on the host.

  Half the buckets per direction (keys after the query get the upper half); within a direction, distances below
  half of that are exact and larger ones share log-spaced buckets up to `max_dist`. float32 logarithms, as the
  reference computes them (the integer buckets agree with float64 at every boundary up to 512 tokens).
  """
  rel = np.arange(k_len, dtype=np.int64)[None, :] - np.arange(q_len, dtype=np.int64)[:, None]
  return _bucket(rel, num_buckets, max_dist)


def _bucket(rel: np.ndarray, num_buckets: int, max_dist: int) -> np.ndarray:
  half = num_buckets // 2
  base = (rel > 0).astype(np.int64) * half
  dist = np.abs(rel)
  max_exact = half // 2
  with np.errstate(divide="ignore"):
    scaled = (np.log(np.maximum(dist, 1).astype(np.float32) / np.float32(max_exact))
              / np.float32(math.log(max_dist / max_exact)) * np.float32(half - max_exact))
  large = np.minimum(max_exact + scaled.astype(np.int64), half - 1)
  return (base + np.where(dist < max_exact, dist, large)).astype(np.int32)


class T5Attention(nnx.Module):
  def __init__(self, cfg: UMT5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
    lin = lambda i, o: nnx.Linear(i, o, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)  # noqa: E731
    self.num_heads = cfg.num_heads
    self.q, self.k, self.v = lin(cfg.dim, cfg.dim_attn), lin(cfg.dim, cfg.dim_attn), lin(cfg.dim, cfg.dim_attn)
    self.o = lin(cfg.dim_attn, cfg.dim)

  def __call__(self, x: Array, bias: Array) -> Array:
    """x [B, L, D]; bias [B, N, L, L] float32 (relative positions, masked keys at float32.min) -> [B, L, D]."""
    b, l, _ = x.shape
    n = self.num_heads
    q, k, v = (p(x).reshape(b, l, n, -1) for p in (self.q, self.k, self.v))  # [B, L, N, H]
    logits = jnp.einsum("binh,bjnh->bnij", q, k, preferred_element_type=jnp.float32) + bias
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bnij,bjnh->binh", weights, v)
    return self.o(out.reshape(b, l, -1))


class T5FeedForward(nnx.Module):
  def __init__(self, cfg: UMT5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
    lin = lambda i, o: nnx.Linear(i, o, use_bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)  # noqa: E731
    self.gate, self.fc1, self.fc2 = lin(cfg.dim, cfg.dim_ffn), lin(cfg.dim, cfg.dim_ffn), lin(cfg.dim_ffn, cfg.dim)

  def __call__(self, x: Array) -> Array:
    return self.fc2(self.fc1(x) * gelu_tanh(self.gate(x)))


class T5Block(nnx.Module):
  def __init__(self, cfg: UMT5Config, *, dtype, param_dtype, rngs: nnx.Rngs):
    self.norm1 = RMSNorm(cfg.dim, eps=cfg.eps, param_dtype=param_dtype)
    self.attn = T5Attention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm2 = RMSNorm(cfg.dim, eps=cfg.eps, param_dtype=param_dtype)
    self.ffn = T5FeedForward(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.pos_embedding = nnx.Param(jax.random.normal(rngs.params(), (cfg.num_buckets, cfg.num_heads), param_dtype))


class UMT5Encoder(nnx.Module):
  """umT5 encoder; parameters mirror PyTorch's names, the blocks stacked on a leading layer axis."""

  def __init__(self, config: UMT5Config, *, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
    self.config = config
    self.dtype = dtype
    self.token_embedding = nnx.Embed(config.vocab, config.dim, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

    @nnx.vmap(in_axes=0, out_axes=0)
    def make_blocks(r: nnx.Rngs) -> T5Block:
      return T5Block(config, dtype=dtype, param_dtype=param_dtype, rngs=r)

    self.blocks = make_blocks(rngs.split(config.num_layers))
    self.norm = RMSNorm(config.dim, eps=config.eps, param_dtype=param_dtype)

  def __call__(self, ids: Array, mask: Array) -> Array:
    """ids, mask int [B, L] (mask 1 on tokens, 0 on padding) -> hidden states [B, L, D] (padded rows included)."""
    x, step, state = self._prepare(ids, mask)
    x, _ = jax.lax.scan(lambda h, st: (step(h, st)[0], None), x, state)
    return self.norm(x)

  def forward_with_activations(self, ids: Array, mask: Array) -> tuple[Array, dict[str, Array]]:
    """`__call__` that also returns its activations, for checking against a reference: "emb" [B, L, D] and
    "per_layer" = (position bias [L_layers, 1, N, L, L], norm1, attention output, hidden [L_layers, B, L, D])."""
    x, step, state = self._prepare(ids, mask)
    emb = x
    x, per_layer = jax.lax.scan(step, x, state)
    return self.norm(x), {"emb": emb, "per_layer": per_layer}

  def _prepare(self, ids: Array, mask: Array):
    """(token embeddings, the layer step (h, block state) -> (h, (pos bias, norm1, attn, h)), the stacked blocks)."""
    cfg = self.config
    b, l = ids.shape
    x = self.token_embedding(ids)  # [B, L, D]
    buckets = jnp.asarray(relative_buckets(l, l, cfg.num_buckets, cfg.max_dist))  # [L, L]
    key_ok = (jnp.asarray(mask) != 0)[:, None, None, :]  # [B, 1, 1, L]
    graphdef, state = nnx.split(self.blocks)

    def step(h, block_state):
      block = nnx.merge(graphdef, block_state)
      pos = block.pos_embedding[...].astype(jnp.float32)[buckets].transpose(2, 0, 1)[None]  # [1, N, L, L]
      bias = jnp.where(key_ok, pos, jnp.finfo(jnp.float32).min)  # [B, N, L, L]
      normed = block.norm1(h)
      attn = block.attn(normed, bias)
      h = h + attn
      h = h + block.ffn(block.norm2(h))
      return h, (pos, normed, attn, h)

    return x, step, state


def wan_embeddings(hidden: Array, mask: Array) -> Array:
  """What Wan feeds the DiT: rows at or past each prompt's token count (mask.sum) set to 0. [B, L, D]."""
  lengths = jnp.sum(jnp.asarray(mask) != 0, axis=1)  # [B]
  keep = jnp.arange(hidden.shape[1])[None, :] < lengths[:, None]
  return jnp.where(keep[..., None], hidden, 0).astype(hidden.dtype)
