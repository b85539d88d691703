"""The autoregressive rollout: chunk by chunk, few-step flow sampling against a structured KV memory.

Per chunk of F frames starting at frame c (Self-Forcing's `CausalInferencePipeline`, spec causal_wan.md §6):

    x = noise
    for i, t_i in enumerate(timesteps):          # e.g. [1000, 937.5, 833.33, 625]
      x0 = x - sigma(t_i) * DiT(x, t_i | memory)
      x = (1 - sigma_{i+1}) * x0 + sigma_{i+1} * eps_i   if i < last      (fresh noise each step)
    output = x0
    DiT(x0, context_noise | memory) -> the chunk's clean keys/values, which the memory stores

The memory policy fixes what the chunk sees (`begin_chunk`), may change it per call (`call_view`/`after_call`),
and stores the refill keys (`end_chunk`). One jitted chunk step serves every chunk: the chunk index is traced, the
memory state has one shape for the whole video, and it is donated to the next step.

Letters: B batch, F chunk frames, (Hl, Wl) latent size, C channels, S denoising steps, L layers.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rf_jax import compile_cache
from rf_jax.memory import Chunk, Geometry, Policy, check_video_length
from rf_jax.model.dit import CausalWanDiT, TextKV
from rf_jax.parallel import placement
from rf_jax.sampling.sampler import Sampler
from rf_jax.sampling.seeds import chunk_noise, sample_noise
from rf_jax.sampling.switching import PromptSchedule, Recache

Array = jax.Array


class ResumePoint(NamedTuple):
  """Where a killed `run` continues: the first chunk still to run, the memory state before it (host arrays, as
  `on_checkpoint` got them), the output frames so far (only needed for re-caches at switches: [B, T, Hl, Wl, C]
  with the frames before `chunk` filled, else None) and the switch events already taken."""
  chunk: int
  state: object
  history: np.ndarray | None = None
  switches: tuple = ()


class ChunkOut(NamedTuple):
  latents: Array  # [B, F, Hl, Wl, C] the chunk's final x0
  trace: dict  # the policy's per-chunk diagnostics (fixed shapes)
  calls: dict  # per-call diagnostics stacked over the S + 1 calls
  call_x0: Array | None  # [S + 1, B, F, Hl, Wl, C] every call's x0 (the refill's last), when recorded


def _chunk_step(graphdef, policy: Policy, sampler: Sampler, record_calls: bool, counter: list,
                model_state, params, mem_state, text: TextKV, chunk_index: Array, noise: Array, renoise: Array,
                timesteps: Array, frame_offset: Array | int = 0):
  counter[0] += 1  # runs once per trace, i.e. per compilation
  model: CausalWanDiT = nnx.merge(graphdef, model_state)
  f = sampler.chunk_frames
  cfg = model.config
  grid = (noise.shape[2] // cfg.patch_size[1], noise.shape[3] // cfg.patch_size[2])
  # Generated chunk j starts at frame offset + j F: after the initial frames of an image-to-video run (traced).
  chunk = Chunk(jnp.asarray(frame_offset, jnp.int32) + jnp.asarray(chunk_index, jnp.int32) * f, f, grid)
  b = noise.shape[0]
  n_steps = timesteps.shape[0]
  mem_state, ctx = policy.begin_chunk(params, mem_state, chunk)
  sig = sampler.schedule.sigma(timesteps.astype(jnp.float32))  # [S]
  sig_next = jnp.concatenate([sig[1:], jnp.zeros((1,), jnp.float32)])  # the last step's x0 is the output

  def denoise(carry, k):
    x, st = carry
    view = policy.call_view(params, st, ctx, chunk)
    t = jnp.full((b, f), timesteps[k].astype(jnp.float32))
    if view.hook is None:
      flow, _ = model(x, t, text, frame_pos=view.chunk_pos, self_mask=None, memory=view.memory,
                      query_pos=view.query_pos)
      aux = None
    else:
      flow, _, aux = model.call_with_hook(x, t, text, frame_pos=view.chunk_pos, self_mask=None,
                                           memory=view.memory, hook=view.hook, query_pos=view.query_pos)
    st, call_trace = policy.after_call(params, st, ctx, aux)
    x0 = x - sig[k] * flow  # [B, F, Hl, Wl, C] float32
    e = sampler.step_noise(renoise[jnp.minimum(k, n_steps - 2)].astype(jnp.float32) if n_steps > 1 else x0, x,
                           flow.astype(jnp.float32), sig[k])  # eta 0: the flow ODE's Euler step
    nxt = jnp.where(k < n_steps - 1, (1 - sig_next[k]) * x0 + sig_next[k] * e, x0)
    return (nxt, st), (x0 if record_calls else None, call_trace)

  (latents, mem_state), (call_x0, calls) = jax.lax.scan(denoise, (noise.astype(jnp.float32), mem_state),
                                                        jnp.arange(n_steps))
  # The refill: the clean chunk at `context_noise`, for the keys and values the memory stores. Only those are
  # computed, unless the calls are recorded (then the whole call runs, for its x0 estimate).
  view = policy.call_view(params, mem_state, ctx, chunk)
  t = jnp.full((b, f), sampler.context_noise, jnp.float32)
  if record_calls:
    flow, kv, aux = model.call_with_hook(latents, t, text, frame_pos=view.chunk_pos, self_mask=None,
                                         memory=view.memory, hook=view.hook, query_pos=view.query_pos)
    sigma = sampler.schedule.sigma(jnp.asarray([sampler.context_noise], jnp.float32))[0]
    call_x0 = jnp.concatenate([call_x0, (latents - sigma * flow)[None]])
  else:
    kv, aux = model.refill_kv(latents, t, text, frame_pos=view.chunk_pos, memory=view.memory, hook=view.hook,
                              query_pos=view.query_pos)
  mem_state, refill_trace = policy.after_call(params, mem_state, ctx, aux)
  calls = jax.tree.map(lambda a, r: jnp.concatenate([a, r[None]]), calls, refill_trace)  # [S + 1, ...]
  mem_state, trace = policy.end_chunk(params, mem_state, ctx, kv, chunk)
  return mem_state, ChunkOut(latents, trace, calls, call_x0)


def _context_step(graphdef, policy: Policy, sampler: Sampler, record: bool, counter: list, model_state, params,
                  mem_state, text: TextKV, latents: Array, first_frame: Array):
  """Given frames into the memory: one call at t = 0 on latents [B, Fb, Hl, Wl, C] starting at `first_frame`,
  stored like a chunk's refill (Self-Forcing's initial-latent calls). Returns (state, (x0, flow) of the call when
  `record` else None, the policy's trace)."""
  counter[0] += 1
  model: CausalWanDiT = nnx.merge(graphdef, model_state)
  cfg = model.config
  b, fb = latents.shape[:2]
  grid = (latents.shape[2] // cfg.patch_size[1], latents.shape[3] // cfg.patch_size[2])
  chunk = Chunk(jnp.asarray(first_frame, jnp.int32), fb, grid)
  mem_state, ctx = policy.begin_chunk(params, mem_state, chunk)
  view = policy.call_view(params, mem_state, ctx, chunk)
  t = jnp.zeros((b, fb), jnp.float32)
  x = latents.astype(jnp.float32)
  if record:
    flow, kv, aux = model.call_with_hook(x, t, text, frame_pos=view.chunk_pos, self_mask=None, memory=view.memory,
                                         hook=view.hook, query_pos=view.query_pos)
    out = (x - flow * sampler.schedule.sigma(jnp.zeros((1,), jnp.float32))[0], flow)
  else:
    kv, aux = model.refill_kv(x, t, text, frame_pos=view.chunk_pos, memory=view.memory, hook=view.hook,
                              query_pos=view.query_pos)
    out = None
  mem_state, _ = policy.after_call(params, mem_state, ctx, aux)
  mem_state, trace = policy.end_chunk(params, mem_state, ctx, kv, chunk)
  return mem_state, out, trace


def _recache_step(graphdef, policy: Policy, sampler: Sampler, record: bool, keep_sink: bool, counter: list,
                  model_state, params, mem_state, text: TextKV, recent: Array, frames: Array, chunk_start: Array):
  """A prompt switch's re-cache (`rf_jax.sampling.switching`): recent [B, W, Hl, Wl, C] are the output latents of
  `frames` (int [W], the policy's `recache_frames` at chunk_start; zeros where -1), re-run in one call at the
  refill's timestep with the new prompt's `text`, no mask among the frames the policy re-runs, keys only from the
  frames it stores. Returns (state, (x0, flow) [B, W, ...] when `record`, the plan's frames/rerun/keys)."""
  counter[0] += 1
  model: CausalWanDiT = nnx.merge(graphdef, model_state)
  cfg = model.config
  b, w = recent.shape[:2]
  grid = (recent.shape[2] // cfg.patch_size[1], recent.shape[3] // cfg.patch_size[2])
  chunk = Chunk(jnp.asarray(chunk_start, jnp.int32), sampler.chunk_frames, grid)
  mem_state, plan = policy.recache_plan(params, mem_state, chunk, jnp.asarray(frames, jnp.int32), keep_sink)
  q = grid[0] * grid[1]
  key_ok = jnp.repeat(plan.keys, q, axis=-1)  # [W*Q] or [B, W*Q]: the re-run tokens that serve as keys
  mask = jnp.broadcast_to(key_ok[..., None, :], (*key_ok.shape[:-1], w * q, w * q))  # every token sees every key
  if mask.ndim == 3:
    mask = mask[:, None]  # per sample: [B, 1, T, T]
  t = jnp.full((b, w), sampler.context_noise, jnp.float32)
  x = recent.astype(jnp.float32)
  pos = jnp.maximum(plan.frames, 0) if plan.positions is None else plan.positions
  flow, kv = model(x, t, text, frame_pos=pos, self_mask=mask, memory=plan.memory)
  mem_state = policy.recache_store(params, mem_state, plan, kv, chunk, keep_sink)
  out = None
  if record:
    sigma = sampler.schedule.sigma(jnp.asarray([sampler.context_noise], jnp.float32))[0]
    out = (x - sigma * flow, flow)
  return mem_state, out, {"frames": plan.frames, "rerun": plan.rerun, "keys": plan.keys}


def initial_blocks(count: int, chunk_frames: int) -> list[tuple[int, int]]:
  """How `count` given frames go into the memory, as (first frame, frames) calls: Self-Forcing takes 3k frames in
  blocks of a chunk, or 1 + 3k with the first frame alone (`independent_first_frame`, image-to-video)."""
  f = chunk_frames
  if count < 0 or count % f not in (0, 1):
    works = sorted({k * f for k in range(1, 4)} | {1 + k * f for k in range(0, 3)})
    raise ValueError(f"{count} initial frames cannot be taken with {f}-frame chunks: the count must be a multiple "
                     f"of {f} (video extension) or 1 + a multiple of {f} (an image first), e.g. "
                     f"{', '.join(map(str, works))}")
  first = [(0, 1)] if count % f == 1 and f > 1 else []
  start = len(first)
  return first + [(i, f) for i in range(start, count, f)]


def _tokens(cfg, latent_shape) -> int:
  _, _, hl, wl, _ = latent_shape
  return (hl // cfg.patch_size[1]) * (wl // cfg.patch_size[2])


TEXT_ROW_BUCKET = 32


def text_rows(context) -> int:
  """Prompt rows worth keeping: up to the last row any sample uses (Wan pads prompts with zero rows), rounded up to
  a multiple of 32 so that prompts of similar length share a compiled step; at most the rows given."""
  used = np.flatnonzero(np.any(np.asarray(context) != 0, axis=(0, 2)))
  n = int(used[-1]) + 1 if used.size else 0
  return min(context.shape[1], max(TEXT_ROW_BUCKET, -(-n // TEXT_ROW_BUCKET) * TEXT_ROW_BUCKET))


class Rollout:
  """A compiled rollout of one model with one memory layout, sampler and latent geometry.

  >>> r = Rollout(model, RelaxPolicy(), Sampler.from_steps(), batch=1, latent_hw=(60, 104), frames=240)
  >>> latents, traces = r.run(context, key=jax.random.key(0))

  `step` runs one chunk (jitted once, reused for every chunk); `run` loops over chunks on the host (for progress
  and streaming output); `run_scan` puts the whole rollout inside one `lax.scan` (for sweeps under vmap/jit).

  Prompts: the zero rows Wan pads a prompt with are cut (`text_rows`) and stand for one key in cross-attention
  (`TextKV`). The rows kept are part of the compiled shape: `text_rows=` fixes them for every prompt this rollout
  will see (a sweep passes the most its prompts need), else each context keeps its own, rounded up to 32.

  With `mesh` (axes data, fsdp, tensor; `rf_jax.parallel.make_mesh`) the rollout runs sharded: parameters by the
  partition rules, the memory state and per-sample arrays over data x fsdp and heads over tensor. Same numbers as
  one device up to float reassociation.
  """

  def __init__(self, model: CausalWanDiT, policy: Policy, sampler: Sampler, *, batch: int,
               latent_hw: tuple[int, int], frames: int, record_calls: bool = False,
               mesh: jax.sharding.Mesh | None = None, text_rows: int | None = None, initial_frames: int = 0,
               recache: Recache | str | None = None, global_sink: bool = True):
    cfg = model.config
    f = sampler.chunk_frames
    self.initial = initial_blocks(initial_frames, f)  # raises naming the counts that work
    if frames < f or frames % f:
      raise ValueError(f"frames={frames} must be a positive multiple of the chunk's {f} frames")
    hl, wl = latent_hw
    if hl % cfg.patch_size[1] or wl % cfg.patch_size[2]:
      raise ValueError(f"latent size {latent_hw} is not divisible by the patch {cfg.patch_size[1:]}")
    policy.check(f)
    check_video_length(policy, frames + initial_frames, f)
    self.model_config = cfg
    self.policy = policy
    self.sampler = sampler
    self.batch = batch
    self.latent_hw = (hl, wl)
    self.frames = frames
    self.num_chunks = frames // f
    self.initial_frames = initial_frames
    self.geometry = Geometry(cfg.num_layers, batch, _tokens(cfg, (1, 1, hl, wl, 1)), cfg.num_heads, cfg.head_dim,
                             f, frames + initial_frames, model.dtype)
    self.mesh = mesh
    if text_rows is not None and not 1 <= text_rows <= cfg.text_len:
      raise ValueError(f"text_rows={text_rows} must be in [1, text_len={cfg.text_len}]")
    self.text_rows = text_rows
    self.params = policy.params()
    self.timesteps = jnp.asarray(sampler.timesteps, jnp.float32)
    self._traces = [0]
    self.final_state = None  # the memory after the last `run` (to inspect it, or continue with `step`)
    self.prefill_out = []  # the initial-frame calls of the last `run`: (x0 when recorded, trace) each
    self.switches = []  # the prompt switches of the last `run`: chunk, frame, prompt, the frames re-cached
    self.step_compile = None  # where the chunk step's last compilation came from (`rf_jax.compile_cache.outcome`)
    n_steps = len(sampler.timesteps)
    if mesh is None:
      self.graphdef, self.model_state = nnx.split(model)
    else:
      placement.mesh_config(mesh).validate(cfg, batch)
      self.graphdef, self.model_state = placement.place_model(model, mesh)
    step = functools.partial(_chunk_step, self.graphdef, policy.static_part(), sampler, record_calls, self._traces)
    self._context_traces = [0]
    context = functools.partial(_context_step, self.graphdef, policy.static_part(), sampler, record_calls,
                                self._context_traces)
    self._context = jax.jit(context, donate_argnums=(2,))
    self.recache = policy.default_recache if recache is None else Recache(recache)
    self.global_sink = bool(global_sink)
    self._recache_traces = [0]
    self._recache_width, self._recache_error = None, None
    self._flush = self.recache is Recache.FLUSH
    if self._flush and not policy.scene_events:
      self._recache_error = (f"recache=flush is Infinity-RoPE's KV Flush; memory policy {policy.name!r} has none "
                             f"(use {policy.default_recache.value} or none)")
    elif self.recache is not Recache.NONE:
      try:
        width = policy.recache_width(self.geometry, self.recache)
        self._recache_width = None if self._flush else width
      except ValueError as e:  # raised when a switch asks for it (a run without switches needs none)
        self._recache_error = str(e)
    if self._recache_width is not None:
      self._recache = jax.jit(functools.partial(_recache_step, self.graphdef, policy.static_part(), sampler,
                                                record_calls, self.global_sink, self._recache_traces),
                              donate_argnums=(2,))
    static = policy.static_part()
    self._event = jax.jit(lambda params, state, flush, cut: static.scene_event(params, state, flush, cut),
                          donate_argnums=(1,))
    if mesh is None:
      self._init = jax.jit(lambda: policy.init(self.geometry))
      self._step = jax.jit(step, donate_argnums=(2,))
      self._noise = jax.jit(functools.partial(chunk_noise, n_steps=n_steps), static_argnames=("shape",))
      self._sample_noise = jax.jit(functools.partial(sample_noise, n_steps=n_steps), static_argnames=("shape",))
    else:
      # Layout only: parameters by PARAM_RULES, the memory state and every per-sample array split over samples
      # (data x fsdp) and heads (tensor); attention sees the mesh through jax.set_mesh. The math is unchanged.
      state_sh = placement.state_shardings(policy.init, self.geometry, mesh)
      per_sample = lambda ndim, axis=0: jax.NamedSharding(mesh, placement.batch_spec(ndim, axis))  # noqa: E731
      noise_sh = (per_sample(5), per_sample(6, 1))

      def constrained_step(*args):
        state, out = step(*args)
        return jax.lax.with_sharding_constraint(state, state_sh), out

      self._init = jax.jit(lambda: policy.init(self.geometry), out_shardings=state_sh)
      self._step = jax.jit(constrained_step, donate_argnums=(2,))
      self._noise = jax.jit(functools.partial(chunk_noise, n_steps=n_steps), static_argnames=("shape",),
                            out_shardings=noise_sh)
      self._sample_noise = jax.jit(functools.partial(sample_noise, n_steps=n_steps), static_argnames=("shape",),
                                   out_shardings=noise_sh)
    self._text = jax.jit(lambda state, context: nnx.merge(self.graphdef, state).text_kv(context))

  @property
  def compile_count(self) -> int:
    """How many times the chunk step was traced (= compiled)."""
    return self._traces[0]

  @property
  def chunk_shape(self) -> tuple[int, ...]:
    return (self.batch, self.sampler.chunk_frames, *self.latent_hw, self.model_config.in_dim)

  def on_mesh(self):
    """The context every computation of this rollout runs in: `jax.set_mesh(mesh)`, or nothing."""
    return contextlib.nullcontext() if self.mesh is None else jax.set_mesh(self.mesh)

  def _per_sample(self, x, axis: int = 0):
    if self.mesh is None:
      return jnp.asarray(x)
    return placement.put_batch(x, self.mesh, axis)

  def init_state(self):
    with self.on_mesh():
      return self._init()

  def _place_state(self, host_state):
    """A memory state from the host (a checkpoint), checked against this rollout's layout and placed like
    `init_state`'s."""
    like = jax.eval_shape(lambda: self.policy.init(self.geometry))
    got, want = jax.tree.structure(host_state), jax.tree.structure(like)
    leaves = jax.tree.leaves(host_state)
    if got != want or any(tuple(np.shape(a)) != tuple(b.shape) or np.asarray(a).dtype != b.dtype
                          for a, b in zip(leaves, jax.tree.leaves(like))):
      raise ValueError("the saved memory state does not fit this rollout (another policy, size or dtype)")
    if self.mesh is None:
      return jax.tree.map(jnp.asarray, host_state)
    shardings = placement.state_shardings(self.policy.init, self.geometry, self.mesh)
    return jax.tree.map(lambda a, sh: jax.device_put(np.asarray(a), sh), host_state, shardings)

  def text_kv(self, context: Array) -> TextKV:
    """The prompt's cross-attention keys/values: context [B, P, text_dim] (host or device array)."""
    if context.ndim != 3 or context.shape[0] != self.batch:
      raise ValueError(f"context has shape {context.shape}; expected [B={self.batch}, P, text_dim]")
    xp = np
    if isinstance(context, jax.core.Tracer) or (isinstance(context, jax.Array) and not context.is_fully_addressable):
      xp, rows = jnp, self.text_rows or context.shape[1]  # values out of reach: cut or pad to text_rows only
    else:
      context = np.asarray(context)
      rows = self.text_rows or text_rows(context)
      if rows < context.shape[1] and np.any(context[:, rows:]):
        raise ValueError(f"context has non-zero rows past text_rows={rows} (it uses {text_rows(context)}); "
                         "raise text_rows")
    context = context[:, :rows] if rows <= context.shape[1] else xp.pad(
        context, ((0, 0), (0, rows - context.shape[1]), (0, 0)))
    with self.on_mesh():
      return self._text(self.model_state, context if xp is jnp else self._per_sample(context))

  def lower(self, text_rows: int | None = None) -> jax.stages.Lowered:
    """The chunk step lowered with abstract inputs (nothing runs, nothing is allocated; the model may be abstract,
    from `nnx.eval_shape`), for `text_rows` prompt rows (default: this rollout's, else text_len). Compile it to
    inspect the program (`rf_jax.cost`)."""
    cfg, geom = self.model_config, self.geometry
    rows = text_rows or self.text_rows or cfg.text_len
    keys = rows + 1 if rows < cfg.text_len else rows  # the merged padding row (TextKV)
    sds = jax.ShapeDtypeStruct
    kv = sds((cfg.num_layers, self.batch, keys, cfg.num_heads, cfg.head_dim), geom.dtype)
    text = TextKV(kv, kv, sds((self.batch, keys), jnp.float32) if keys != rows else None)
    steps = len(self.sampler.timesteps)
    state = jax.eval_shape(lambda: self.policy.init(geom))
    with self.on_mesh():
      return self._step.lower(self.model_state, self.params, state, text, sds((), jnp.int32),
                              sds(self.chunk_shape, jnp.float32), sds((steps - 1, *self.chunk_shape), jnp.float32),
                              self.timesteps)

  def prefill(self, state, text: TextKV, initial: Array, params=None) -> tuple[object, list]:
    """The given frames into the memory (image-to-video, video extension): initial [B, n, Hl, Wl, C] with n this
    rollout's `initial_frames`, in the calls `initial_blocks` lists. Returns (state, per call ((x0, flow) when
    calls are recorded, else None; the policy's trace))."""
    expected = (self.batch, self.initial_frames, *self.latent_hw, self.model_config.in_dim)
    if tuple(initial.shape) != expected:
      raise ValueError(f"initial latents have shape {tuple(initial.shape)}; expected {expected}")
    outs = []
    for i in range(len(self.initial)):
      state, out, trace = self.prefill_call(state, text, initial, i, params)
      outs.append((out, trace))
    return state, outs

  def prefill_call(self, state, text: TextKV, initial: Array, index: int, params=None):
    """Initial-frame call `index` of `initial_blocks` alone: (state, (x0, flow) or None, trace). `state` is
    donated."""
    params = self.params if params is None else params
    first, count = self.initial[index]
    with self.on_mesh():
      return self._context(self.model_state, params, state, text,
                           self._per_sample(jnp.asarray(initial[:, first:first + count])), jnp.int32(first))

  def recache_frames(self, state, chunk_start: int) -> np.ndarray:
    """The frames a re-cache before the chunk at `chunk_start` re-runs (int [W] or [B, W]; -1: none)."""
    return np.asarray(self.policy.recache_frames(state, chunk_start, self._recache_width))

  def gather_frames(self, history: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """Output latents history [B, T, ...] at `frames` ([W] or [B, W]; zeros where -1) -> [B, W, ...]."""
    idx = np.broadcast_to(frames, (history.shape[0], frames.shape[-1]))
    got = np.take_along_axis(history, np.maximum(idx, 0)[:, :, None, None, None], axis=1)
    return np.where((idx >= 0)[:, :, None, None, None], got, 0.0).astype(np.float32)

  def recache_call(self, state, text: TextKV, recent: Array, chunk_start: int, params=None,
                   frames: np.ndarray | None = None):
    """A prompt switch's re-cache before the chunk starting at frame `chunk_start` (> 0): recent [B, W, Hl, Wl, C]
    the output latents of `recache_frames(state, chunk_start)` (zeros where -1; for a window, the last W frames),
    `text` the new prompt's; `frames`: those frames when the caller already has them. Returns (state, (x0, flow)
    when calls are recorded else None, {frames, rerun, keys}). `state` is donated."""
    if self._recache_width is None:
      raise ValueError("this rollout was built with recache=none")
    params = self.params if params is None else params
    with self.on_mesh():
      frames = jnp.asarray(self.recache_frames(state, chunk_start) if frames is None else frames, jnp.int32)
      return self._recache(self.model_state, params, state, text, self._per_sample(jnp.asarray(recent)), frames,
                           jnp.int32(chunk_start))

  def scene_event(self, state, *, flush: bool, cut: bool, params=None):
    """A scene boundary before the next chunk (Infinity-RoPE): KV Flush and/or RoPE Cut. `state` is donated."""
    params = self.params if params is None else params
    with self.on_mesh():
      return self._event(params, state, jnp.asarray(flush), jnp.asarray(cut))

  @property
  def recache_width(self) -> int | None:
    return self._recache_width

  def step(self, state, text: TextKV, chunk_index: int, noise: Array, renoise: Array, params=None):
    """One chunk (generated chunk `chunk_index`, after the initial frames): returns (new state, ChunkOut).
    `state` is donated."""
    params = self.params if params is None else params
    compiles, cache = self.compile_count, compile_cache.events()
    with self.on_mesh():
      out = self._step(self.model_state, params, state, text, jnp.asarray(chunk_index, jnp.int32),
                       self._per_sample(noise), self._per_sample(renoise, 1), self.timesteps,
                       jnp.int32(self.initial_frames))
    if self.compile_count > compiles:
      self.step_compile = compile_cache.outcome(cache)
    return out

  def noise(self, key: Array, chunk_index: int) -> tuple[Array, Array]:
    """The chunk's noise from one key for the batch, or from one key per sample (`key` of shape [B])."""
    index = jnp.asarray(chunk_index, jnp.int32)
    with self.on_mesh():
      if key.shape == (self.batch,):
        return self._sample_noise(key, index, shape=self.chunk_shape)
      if key.shape:
        raise ValueError(f"key has shape {key.shape}; expected one key or one per sample [{self.batch}]")
      return self._noise(key, index, shape=self.chunk_shape)

  def run(self, context: Array, *, key: Array | None = None, noise: Array | None = None,
          renoise: Array | None = None, params=None, initial: Array | None = None,
          schedule: PromptSchedule | None = None,
          on_chunk: Callable[[int, ChunkOut], None] | None = None, resume: ResumePoint | None = None,
          on_checkpoint: Callable[[int, object], None] | None = None,
          checkpoint_every: int = 0) -> tuple[np.ndarray | None, list]:
    """The whole video, chunk by chunk. Noise comes from `key`, or from explicit arrays (to reproduce a reference):
    `noise` [B, frames, Hl, Wl, C] and `renoise` [chunks, S - 1, B, F, Hl, Wl, C]. `key` is one key for the
    batch or one per sample ([B]; see `sample_noise`).

    With `initial_frames`, `initial` [B, n, Hl, Wl, C] goes into the memory first (`prefill`), the generated frames
    continue its positions, and the returned latents start with it (copied).

    With a `schedule` of K prompts, `context` is [K, B, P, text_dim]: prompt k conditions the chunks from its switch
    on, and at each switch the memory is re-cached (this rollout's `recache`). `self.switches` lists what happened.

    With `on_chunk`, each finished chunk is handed over (one chunk behind the device, so it never waits) and
    nothing is kept; otherwise returns (latents [B, initial + frames, Hl, Wl, C], list of ChunkOut on the host).

    With `on_checkpoint` and `checkpoint_every` K, after every K-th chunk (all earlier chunks handed over) it gets
    (the next chunk, the memory state on the host): what a `ResumePoint` needs, with the same noise key, to continue
    a killed run to the same latents. `resume` continues from one (with `on_chunk`: chunks before it are not
    handed over again).
    """
    if (key is None) == (noise is None):
      raise ValueError("give either key or noise (and renoise)")
    if (initial is None) != (self.initial_frames == 0):
      raise ValueError(f"this rollout takes {self.initial_frames} initial frames; initial is "
                       f"{'missing' if initial is None else 'given'}")
    f = self.sampler.chunk_frames
    if noise is not None:
      expected = (self.batch, self.frames, *self.latent_hw, self.model_config.in_dim)
      if tuple(noise.shape) != expected:
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected {expected}")
      steps = len(self.sampler.timesteps)
      if renoise is None or tuple(renoise.shape) != (self.num_chunks, steps - 1, *self.chunk_shape):
        raise ValueError(f"renoise has shape {None if renoise is None else tuple(renoise.shape)}; expected "
                         f"{(self.num_chunks, steps - 1, *self.chunk_shape)}")
    schedule = schedule or PromptSchedule()
    if schedule.num_prompts > 1 and (context.ndim != 4 or context.shape[0] != schedule.num_prompts):
      raise ValueError(f"a schedule of {schedule.num_prompts} prompts needs context [{schedule.num_prompts}, B, P, "
                       f"text_dim]; got {tuple(context.shape)}")
    schedule.check(self.initial_frames + self.frames)
    if schedule.num_prompts > 1 and self._recache_error:
      raise ValueError(self._recache_error)
    if schedule.has_cuts and not self.policy.scene_events:
      raise ValueError(f"a RoPE cut is an Infinity-RoPE scene event; memory policy {self.policy.name!r} has none")
    if schedule.has_cuts and f < 3:
      raise ValueError(f"a RoPE cut moves a block's last 3 frames: it needs chunks of at least 3 frames, not {f}")
    texts = [self.text_kv(c) for c in (context if context.ndim == 4 else context[None])]
    starts = [self.initial_frames + j * f for j in range(self.num_chunks)]
    plan = schedule.chunk_prompts(starts)
    text = texts[plan[0][0]]
    first = 0 if resume is None else resume.chunk
    if resume is None:
      state = self.init_state()
      if initial is not None:
        state, self.prefill_out = self.prefill(state, text, initial, params)
    else:
      state = self._place_state(resume.state)
    history = None  # every output frame so far, on the host, for the re-caches (only when there are switches)
    if self._recache_width is not None and schedule.num_prompts > 1:
      history = np.zeros((self.batch, self.initial_frames + self.frames, *self.latent_hw, self.model_config.in_dim),
                         np.float32)
      if resume is not None:
        if resume.history is None:
          raise ValueError("resuming a run with re-caches needs the output frames so far (ResumePoint.history)")
        history[:, :starts[first]] = resume.history[:, :starts[first]]
      elif initial is not None:
        history[:, :self.initial_frames] = np.asarray(initial, np.float32)
    self.switches = [] if resume is None else list(resume.switches)
    kept: list[ChunkOut] = []
    pending: tuple[int, ChunkOut] | None = None

    def hand_over(j, out):
      # Latents spread over processes stay a jax.Array (each process takes its own rows: placement.host_rows);
      # the small traces are gathered whole on every process.
      keep_global = on_chunk is not None and not out.latents.is_fully_addressable
      out = out._replace(latents=out.latents if keep_global else placement.to_host(out.latents),
                         trace=jax.tree.map(placement.to_host, out.trace),
                         calls=jax.tree.map(placement.to_host, out.calls),
                         call_x0=None if out.call_x0 is None else placement.to_host(out.call_x0))
      if on_chunk is not None:
        on_chunk(j, out)
      else:
        kept.append(out)

    for j in range(first, self.num_chunks):
      if noise is not None:
        x, eps = jnp.asarray(noise[:, j * f:(j + 1) * f]), jnp.asarray(renoise[j])
      else:
        x, eps = self.noise(key, j)
      prompt, switch = plan[j]
      if switch:
        event = {"chunk": j, "frame": starts[j], "prompt": prompt, "recached_frames": []}
        cut = schedule.cuts[prompt - 1]
        if self._flush or cut:  # a scene boundary (Infinity-RoPE): KV Flush and/or RoPE Cut, no model call
          state = self.scene_event(state, flush=self._flush, cut=cut, params=params)
          event.update(flush=self._flush, cut=cut)
        elif history is not None and starts[j] > 0:
          frames = self.recache_frames(state, starts[j])
          recent = self.gather_frames(history, frames)
          state, _, info = self.recache_call(state, texts[prompt], recent, starts[j], params, frames=frames)
          frames, keys = (np.asarray(info[k]).reshape(-1, np.asarray(info[k]).shape[-1])[0] for k in ("frames", "keys"))
          event["recached_frames"] = sorted({int(x) for x, k in zip(frames, keys) if k})
        self.switches.append(event)
      state, out = self.step(state, texts[prompt], j, x, eps, params)
      if history is not None:  # a host copy of each chunk (it waits for the chunk: switches cost their overlap)
        history[:, starts[j]:starts[j] + f] = np.asarray(out.latents, np.float32)
      if pending is not None:
        hand_over(*pending)
      pending = (j, out)
      if on_checkpoint is not None and checkpoint_every > 0 and (j + 1) % checkpoint_every == 0 \
          and j + 1 < self.num_chunks:
        hand_over(*pending)  # every chunk before the checkpoint is out before it is taken
        pending = None
        on_checkpoint(j + 1, jax.tree.map(placement.to_host, state))
    if pending is not None:
      hand_over(*pending)
    self.final_state = state
    if on_chunk is not None:
      return None, []
    head = [] if initial is None else [np.asarray(initial, np.float32)]
    return np.concatenate(head + [o.latents for o in kept], axis=1), kept

  def run_scan(self, context: Array, key: Array, params=None):
    """The whole rollout as one traced function (lax.scan over chunks): (latents, stacked traces). Jit or vmap it
    for sweeps; the policy scalars in `params` may be traced. On a mesh, trace it under `with rollout.on_mesh():`."""
    params = self.params if params is None else params
    if self.initial_frames:
      raise ValueError("run_scan does not take initial frames yet; use run(initial=...)")
    text = self.text_kv(context) if not isinstance(context, TextKV) else context
    step = functools.partial(_chunk_step, self.graphdef, self.policy.static_part(), self.sampler, False, [0])

    def body(state, j):
      x, eps = chunk_noise(key, j, self.chunk_shape, len(self.sampler.timesteps))
      state, out = step(self.model_state, params, state, text, j, x, eps, self.timesteps)
      return state, (out.latents, out.trace)

    _, (lat, traces) = jax.lax.scan(body, self.policy.init(self.geometry), jnp.arange(self.num_chunks))
    lat = jnp.moveaxis(lat, 0, 1)  # [B, chunks, F, ...]
    return lat.reshape(self.batch, self.frames, *lat.shape[3:]), traces
