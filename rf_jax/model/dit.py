"""The causal Wan2.1 text-to-video DiT (Self-Forcing's `CausalWanModel`) in Flax NNX.

References: Wan-Video/Wan2.1 @9737cba (`wan/modules/model.py`); guandeh17/Self-Forcing @33593df
(`wan/modules/causal_model.py`). Spec: shared/spec/causal_wan.md.

    patch embed -> 30 x WanBlock (per-frame adaLN, self-attn with 3-D RoPE, text cross-attn, FFN) -> head -> unpatchify

The model knows nothing of memory policy. A call takes the chunk's latents, per-frame timesteps, the text keys and
values, the frame positions of the chunk, optionally a fixed-shape `MemoryView` (keys/values of M frame slots per
layer, stored rotated, with the extra rotation each entry needs, and their validity) and a token mask within the
chunk; it returns the flow prediction and the chunk's own pre-RoPE keys and values for every layer.

Letters: B batch, F latent frames of the call, (Hl, Wl) latent height/width, C latent channels, (Hp, Wp) patch
grid, Q = Hp*Wp tokens per frame, T = F*Q query tokens, M memory slots, S keys, N heads, H head dim, D width,
L layers, P text tokens.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rf_jax.config import ModelConfig
from rf_jax.model.attention import ChunkQKV, FrameKV
from rf_jax.model.block import WanBlock
from rf_jax.model.layers import gelu_tanh, layer_norm, modulate, sinusoidal_embedding
from rf_jax.model.rope import rope_cos_sin, shift_cos_sin
from rf_jax.ops import AttnImpl, BlockCausal, SlotMemory, resolve

Array = jax.Array
X0_SIGMA_FLOOR = 0.05  # ModelConfig.prediction == "x0": the smallest sigma the implied flow divides by


class TextKV(NamedTuple):
  """Cross-attention keys and values of the prompt, per layer: [L, B, P, N, H]. Computed once per prompt.

  Wan pads every prompt with zero rows to `text_len`, and every padding row has the same key and value. They are
  kept once: `bias` [B, P] adds log(count) to that row's logits (exactly what `count` equal keys contribute to the
  softmax), 0 to the others; None when nothing was merged.
  """
  k: Array
  v: Array
  bias: Array | None = None


class MemoryView(NamedTuple):
  """What the memory shows the model for one call: M entries, each a frame slot of per-layer keys and values.

  Entry m is slot `slots[b, m]` of k/v (slot m when `slots` is None); the backends read the slots in place. Keys
  are stored rotated at the position the memory wrote them at; `shift[b, m]` is how many frame positions further
  entry m is turned for this call (None: every entry is used where it is stored).
  """
  k: Array  # [L, B, N, R, Q, H] keys, rotated where they were stored
  v: Array  # [L, B, N, R, Q, H]
  shift: Array | None  # int32 [B, M]: extra frame positions of each entry's rotation, or None
  valid: Array  # bool [B, M]: False entries are masked out of attention (and skipped by every backend)
  slots: Array | None = None  # int32 [B, M]: the slot of each entry; None = the identity (M = R)


class LayerHook(NamedTuple):
  """A memory that decides inside each layer (Context Forcing's per-layer promotion).

  `fn(xs_l, chunk) -> ((k, v[, valid]), aux_l)` runs in layer l after the chunk's queries, keys and values are
  projected and before attention: `xs_l` is layer l's slice of `xs` (a pytree with a leading layer axis L),
  `chunk` the chunk's pre-RoPE `ChunkQKV` [B, F, Q, N, H]; it returns the memory keys/values [B, N, M, Q, H] that
  layer attends to (at the shifts of the call's `MemoryView`, and at its validity unless the layer gives its own
  bool [B, M]: a memory whose layers hold different entries) and any per-layer output, stacked over layers.
  """
  fn: Callable[[Any, ChunkQKV], tuple[tuple[Array, ...], Any]]
  xs: Any


class _Embedded(NamedTuple):
  patches: Array  # [B, F, Hp, Wp, D] in the compute dtype
  e: Array  # [B*F, D] float32: the time embedding
  e0: Array  # [B*F, 6D] float32: its projection (the blocks' modulation)


class PatchEmbed(nnx.Module):
  """Conv3d with kernel = stride = patch, as one matmul; kernel [pt, ph, pw, C, D] (PyTorch's, transposed)."""

  def __init__(self, patch: tuple[int, int, int], in_dim: int, dim: int, *, param_dtype, rngs: nnx.Rngs):
    self.patch = patch
    fan_in = in_dim * patch[0] * patch[1] * patch[2]
    self.kernel = nnx.Param(jax.random.normal(rngs.params(), (*patch, in_dim, dim), param_dtype) / fan_in**0.5)
    self.bias = nnx.Param(jnp.zeros((dim,), param_dtype))

  def __call__(self, x: Array, dtype) -> Array:
    """x: [B, F, Hl, Wl, C] -> [B, F/pt, Hp, Wp, D]."""
    b, f, h, w, c = x.shape
    pt, ph, pw = self.patch
    x = x.reshape(b, f // pt, pt, h // ph, ph, w // pw, pw, c).transpose(0, 1, 3, 5, 2, 4, 6, 7)
    y = jnp.einsum("bfhwijkc,ijkcd->bfhwd", x.astype(dtype), self.kernel[...].astype(dtype))
    return y + self.bias[...].astype(dtype)


class Head(nnx.Module):
  """Output head with its own (shift, scale) modulation from the pre-projection time embedding."""

  def __init__(self, dim: int, out_features: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs):
    self.eps = eps
    self.dtype = dtype
    self.modulation = nnx.Param(jax.random.normal(rngs.params(), (1, 2, dim), param_dtype) / dim**0.5)
    self.head = nnx.Linear(dim, out_features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x: Array, e: Array) -> Array:
    """x: [B, F, Q, D] float32; e: [B, F, D] float32 -> [B, F, Q, pt*ph*pw*C]."""
    m = self.modulation[...].astype(jnp.float32)[None] + e[:, :, None, :]  # [B, F, 2, D]
    shift, scale = m[:, :, 0, None, :], m[:, :, 1, None, :]
    return self.head(modulate(layer_norm(x, self.eps), shift, scale).astype(self.dtype))


class CausalWanDiT(nnx.Module):
  """Causal Wan2.1 DiT. Parameters mirror PyTorch's names; the blocks are stacked on a leading layer axis."""

  def __init__(self, config: ModelConfig, *, dtype=jnp.float32, param_dtype=jnp.float32,
               attn_impl: AttnImpl | str = AttnImpl.AUTO, rngs: nnx.Rngs):
    if config.patch_size[0] != 1:
      raise ValueError(f"patch_size={config.patch_size}: only a temporal patch of 1 is supported (per-frame "
                       "timesteps and frame slots assume one token frame per latent frame)")
    self.config = config
    self.dtype = dtype
    attn_impl = AttnImpl.parse(attn_impl)
    self.attn_impl = attn_impl
    d = config.dim
    lin = lambda i, o, dt=dtype: nnx.Linear(i, o, dtype=dt, param_dtype=param_dtype, rngs=rngs)  # noqa: E731
    self.patch_embedding = PatchEmbed(config.patch_size, config.in_dim, d, param_dtype=param_dtype, rngs=rngs)
    self.text_embedding = nnx.Sequential(lin(config.text_dim, d), gelu_tanh, lin(d, d))
    # The time path always runs in float32 (upstream Wan's autocast island).
    self.time_embedding = nnx.Sequential(lin(config.freq_dim, d, jnp.float32), nnx.silu, lin(d, d, jnp.float32))
    self.time_projection = nnx.Sequential(nnx.silu, lin(d, 6 * d, jnp.float32))

    @nnx.vmap(in_axes=0, out_axes=0)
    def make_blocks(r: nnx.Rngs) -> WanBlock:
      return WanBlock(config, attn_impl=attn_impl, dtype=dtype, param_dtype=param_dtype, rngs=r)

    self.blocks = make_blocks(rngs.split(config.num_layers))
    self.head = Head(d, config.out_dim * config.patch_volume, eps=config.eps, dtype=dtype,
                     param_dtype=param_dtype, rngs=rngs)

  def attention_backend(self) -> AttnImpl:
    """The backend this model's attention runs on here (`auto` resolved for this platform and dtype)."""
    return resolve(self.attn_impl, self.dtype)

  # ---------------------------------------------------------------------------------------------------- text

  def embed_text(self, context: Array) -> Array:
    """context: [B, Pc, text_dim] with Pc <= text_len -> [B, P, D]; zero-padded to text_len rows first."""
    b, p, width = context.shape
    cfg = self.config
    if width != cfg.text_dim or p > cfg.text_len:
      raise ValueError(f"context has shape {context.shape}; expected [B, <= text_len={cfg.text_len}, "
                       f"text_dim={cfg.text_dim}]")
    context = jnp.pad(context, ((0, 0), (0, cfg.text_len - p), (0, 0)))
    return self.text_embedding(context.astype(self.dtype))

  def text_kv(self, context: Array) -> TextKV:
    """Per-layer cross-attention keys/values of the prompt: [B, Pc, text_dim] -> TextKV([L, B, P, N, H]).

    The text_len - Pc zero rows Wan pads the prompt with are one key with a log(text_len - Pc) bias: P = Pc + 1
    (P = text_len, no bias, when Pc = text_len). Pass a context cut after its last non-zero row to save the work.
    """
    b, pc, _ = context.shape
    y = self.embed_text(context)  # [B, text_len, D]
    pad = self.config.text_len - pc
    bias = None
    if pad > 0:
      y = y[:, :pc + 1]  # row pc is a padding row: the embedding of zeros
      bias = jnp.zeros((b, pc + 1), jnp.float32).at[:, pc].set(float(np.log(pad)))
    graphdef, state = nnx.split(self.blocks)

    def layer(_, block_state):
      block = nnx.merge(graphdef, block_state)
      return None, block.cross_attn.text_kv(y)

    _, (k, v) = jax.lax.scan(layer, None, state)
    return TextKV(k, v, bias)

  # ---------------------------------------------------------------------------------------------------- forward

  def __call__(self, x: Array, t: Array, text: TextKV, *, frame_pos: Array,
               self_mask: BlockCausal | Array | np.ndarray | None,
               memory: MemoryView | None = None, query_pos: Array | None = None) -> tuple[Array, FrameKV]:
    """One call of the DiT on a chunk.

    Args:
      x: latents [B, F, Hl, Wl, C] (channels last).
      t: per-frame timesteps [B, F].
      text: prompt keys/values from `text_kv`.
      frame_pos: int [F], the RoPE frame position of each frame of the chunk.
      self_mask: the mask among the chunk's own tokens: None for full (bidirectional) attention, a
        `BlockCausal` structure (training; every backend), or a dense bool [T, T] (reference/cudnn only).
      memory: the memory slots to attend to besides the chunk, or None. frame_pos and the memory's stored
        positions plus shifts live in one frame of reference (RoPE sees only their differences).
      query_pos: int [F], where the chunk's queries sit when not at its keys' `frame_pos` (None: there).

    Returns:
      flow prediction [B, F, Hl, Wl, C] in float32, and the chunk's pre-RoPE keys/values [L, B, F, Q, N, H].
    """
    flow, chunk_kv, _ = self._forward(x, t, text, frame_pos, self_mask, memory, None, query_pos)
    return flow, chunk_kv

  def call_with_hook(self, x: Array, t: Array, text: TextKV, *, frame_pos: Array,
                     self_mask: BlockCausal | Array | np.ndarray | None, memory: MemoryView | None,
                     hook: LayerHook | None, query_pos: Array | None = None) -> tuple[Array, FrameKV, Any]:
    """Like `__call__`, but each layer's memory keys/values come from `hook` (`memory.k/v` are ignored and may be
    None). Returns (flow, chunk FrameKV [L, B, F, Q, N, H], the hook's per-layer outputs stacked over L; None
    without a hook)."""
    return self._forward(x, t, text, frame_pos, self_mask, memory, hook, query_pos)

  def refill_kv(self, x: Array, t: Array, text: TextKV, *, frame_pos: Array, memory: MemoryView | None,
                hook: LayerHook | None = None, query_pos: Array | None = None) -> tuple[FrameKV, Any]:
    """The keys and values a call on x would produce, without what only the flow needs: the last layer stops after
    its key/value projections and the head does not run. Returns (chunk FrameKV [L, B, F, Q, N, H], the hook's
    per-layer outputs or None): what the memory stores after a chunk (the refill)."""
    _, chunk_kv, hook_out = self._forward(x, t, text, frame_pos, None, memory, hook, query_pos, keys_only=True)
    return chunk_kv, hook_out

  def _embed(self, x: Array, t: Array) -> "_Embedded":
    cfg = self.config
    b, f, hl, wl, c = x.shape
    _, ph, pw = cfg.patch_size
    if c != cfg.in_dim or hl % ph or wl % pw:
      raise ValueError(f"x has shape {x.shape}; expected [B, F, H, W, C={cfg.in_dim}] with H % {ph} == 0 and "
                       f"W % {pw} == 0")
    if t.shape != (b, f):
      raise ValueError(f"t has shape {t.shape}; expected one timestep per frame, [B, F] = {(b, f)}")
    patches = self.patch_embedding(x, self.dtype)  # [B, F, Hp, Wp, D]
    e = self.time_embedding(sinusoidal_embedding(t.reshape(-1), cfg.freq_dim))  # [B*F, D]
    e0 = self.time_projection(e)  # [B*F, 6D]
    return _Embedded(patches, e, e0)

  def _layer_step(self, x: Array, text: TextKV, frame_pos: Array, self_mask, memory: MemoryView | None,
                  hook: LayerHook | None, e0: Array, query_pos: Array | None = None):
    """(step(h, xs, just_keys=False) -> (h, chunk FrameKV, hook aux), xs): one block of the scan and what it scans
    over (each block's parameters, text keys/values, hook inputs and index)."""
    cfg = self.config
    _, _, hl, wl, _ = x.shape
    _, ph, pw = cfg.patch_size
    hp, wp = hl // ph, wl // pw
    cos, sin = rope_cos_sin(frame_pos, (hp, wp), cfg.head_dim)  # [F, Q, H/2]
    q_rope = None if query_pos is None else rope_cos_sin(query_pos, (hp, wp), cfg.head_dim)
    mask = self_mask if self_mask is None or isinstance(self_mask, BlockCausal) else jnp.asarray(self_mask, bool)
    mem_cos = mem_sin = mem_xs = None
    if memory is not None:
      if memory.shift is not None:
        ang = shift_cos_sin(memory.shift, cfg.head_dim)  # the frame axis turns: [B, M, H/2]
        mem_cos, mem_sin = (jnp.broadcast_to(a[:, :, None], (*a.shape[:2], hp * wp, a.shape[-1])) for a in ang)
      mem_xs = hook.xs if hook is not None else None
    graphdef, state = nnx.split(self.blocks)

    def step(h, xs, just_keys: bool = False):
      block_state, text_k, text_v, mem_l, index = xs
      block = nnx.merge(graphdef, block_state)
      if memory is None:
        mem = None
      elif hook is None:  # every layer's memory stays stacked: attention reads layer `index`'s frames in place
        mem = SlotMemory(memory.k, memory.v, memory.slots, memory.valid, mem_cos, mem_sin, index)
      else:
        def mem(chunk: ChunkQKV):
          (k, v, *valid), aux = hook.fn(mem_l, chunk)
          return SlotMemory(k, v, None, valid[0] if valid else memory.valid, mem_cos, mem_sin), aux
      if just_keys:  # the refill's last layer: its output would feed only the head
        return block.keys_only(h, e0, mem)
      return block(h, e0, text_k, text_v, text.bias, cos, sin, mask, mem, q_rope)

    return step, (state, text.k, text.v, mem_xs, jnp.arange(cfg.num_layers, dtype=jnp.int32))

  def _head(self, x: Array, t: Array, h: Array, e: Array) -> tuple[Array, Array]:
    """(flow [B, F, Hl, Wl, C] float32, the head's raw output [B, F, Q, ph*pw*C]) from the last hidden state."""
    cfg = self.config
    b, f, hl, wl, _ = x.shape
    _, ph, pw = cfg.patch_size
    hp, wp = hl // ph, wl // pw
    raw = self.head(h, e)  # [B, F, Q, ph*pw*C]
    out = raw.astype(jnp.float32).reshape(b, f, hp, wp, ph, pw, cfg.out_dim)
    out = out.transpose(0, 1, 2, 4, 3, 5, 6).reshape(b, f, hl, wl, cfg.out_dim)  # [B, F, Hl, Wl, C]
    if cfg.prediction == "x0":  # the head predicts the clean sample: return the flow it implies
      sigma = jnp.maximum(t.astype(jnp.float32) / 1000.0, X0_SIGMA_FLOOR)[:, :, None, None, None]  # [B, F, 1, 1, 1]
      out = (x.astype(jnp.float32) - out) / sigma
    return out, raw

  def _forward(self, x, t, text, frame_pos, self_mask, memory, hook, query_pos=None, keys_only: bool = False):
    cfg = self.config
    b, f = x.shape[:2]
    emb = self._embed(x, t)
    tokens = emb.patches.reshape(b, f, -1, cfg.dim).astype(jnp.float32)  # [B, F, Q, D]
    e, e0 = emb.e.reshape(b, f, cfg.dim), emb.e0.reshape(b, f, 6, cfg.dim)
    step, xs = self._layer_step(x, text, frame_pos, self_mask, memory, hook, e0, query_pos)
    if keys_only:  # layers 0..L-2 in a loop that reads each layer in place, then the last layer's keys
      take = lambda i: jax.tree.map(lambda a: a[i], xs)  # noqa: E731
      last = cfg.num_layers - 1

      def body(h, i):
        h, kv, aux = step(h, take(i))
        return h, (kv, aux)

      h, (head_kv, head_aux) = jax.lax.scan(body, tokens, jnp.arange(last))
      _, last_kv, last_aux = step(h, take(last), just_keys=True)
      join = lambda a, b: jnp.concatenate([a, b[None]]) if a is not None else None  # noqa: E731
      return None, jax.tree.map(join, head_kv, last_kv), jax.tree.map(join, head_aux, last_aux)

    def body(h, xs_l):
      h, kv, aux = step(h, xs_l)
      return h, (kv, aux)

    h, (chunk_kv, hook_out) = jax.lax.scan(body, tokens, xs)
    flow, _ = self._head(x, t, h, e)
    return flow, chunk_kv, hook_out

  def forward_with_activations(self, x: Array, t: Array, context: Array, *, chunk_frames: int = 3,
                               local_window_frames: int = -1) -> tuple[Array, dict[str, Array]]:
    """`forward_train` that also returns its intermediate activations, for checking against a reference:

      act_patch_embedding  [B, F, Hp, Wp, D]     act_text_embedding   [B, text_len, D]
      act_time_embedding   [B*F, D]              act_time_projection  [B*F, 6D]
      act_block{i}         [B, F*Q, D] (the residual stream after block i)
      act_head             [B, F, Q, ph*pw*C]    (the head's output before unpatchify)
    """
    cfg = self.config
    b, f, hl, wl, _ = x.shape
    _, ph, pw = cfg.patch_size
    text_embedding = self.embed_text(context)
    text = self.text_kv(context)
    emb = self._embed(x, t)
    tokens = emb.patches.reshape(b, f, -1, cfg.dim).astype(jnp.float32)
    e, e0 = emb.e.reshape(b, f, cfg.dim), emb.e0.reshape(b, f, 6, cfg.dim)
    mask = BlockCausal((hl // ph) * (wl // pw), chunk_frames, local_window_frames)
    step, xs = self._layer_step(x, text, jnp.arange(f, dtype=jnp.int32), mask, None, None, e0)

    def body(h, xs_l):
      h, _, _ = step(h, xs_l)
      return h, h

    h, hidden = jax.lax.scan(body, tokens, xs)  # hidden [L, B, F, Q, D]
    flow, raw = self._head(x, t, h, e)
    acts = {"act_patch_embedding": emb.patches, "act_text_embedding": text_embedding,
            "act_time_embedding": emb.e, "act_time_projection": emb.e0, "act_head": raw}
    acts.update({f"act_block{i}": hidden[i].reshape(b, -1, cfg.dim) for i in range(cfg.num_layers)})
    return flow, acts

  def forward_train(self, x: Array, t: Array, context: Array, *, chunk_frames: int = 3,
                    local_window_frames: int = -1) -> Array:
    """The training-style forward (no memory): block-causal attention over all F frames at positions 0..F-1.

    x: [B, F, Hl, Wl, C]; t: [B, F]; context: [B, Pc, text_dim] -> flow [B, F, Hl, Wl, C].
    """
    _, f, hl, wl, _ = x.shape
    _, ph, pw = self.config.patch_size
    mask = BlockCausal((hl // ph) * (wl // pw), chunk_frames, local_window_frames)
    flow, _ = self(x, t, self.text_kv(context), frame_pos=jnp.arange(f, dtype=jnp.int32), self_mask=mask)
    return flow
