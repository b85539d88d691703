"""An independent float64 NumPy implementation of the causal Wan DiT's training forward, written from the spec
(shared/spec/causal_wan.md §2-4) in PyTorch's layout and key names. It shares no code with rf_jax.

It is checked against the PyTorch fixtures A and C (tests/test_numpy_reference.py), then used to write reference
folders of sizes the fixtures do not cover, which `rf-jax check-reference` must pass.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np


def _linear(sd, name, x):
  return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _silu(x):
  return x / (1 + np.exp(-x))


def _layer_norm(x, eps, weight=None, bias=None):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  y = (x - mu) / np.sqrt(var + eps)
  return y if weight is None else y * weight + bias


def _rms_norm(x, eps, weight):
  return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * weight


def rope_freqs(head_dim, positions=1024):
  """complex128 [positions, head_dim/2]: the reference's `freqs`."""
  d = head_dim
  tables = []
  for dim in (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6)):
    inv = 1.0 / np.power(10000.0, np.arange(0, dim, 2)[: dim // 2].astype(np.float64) / dim)
    tables.append(np.exp(1j * np.outer(np.arange(positions), inv)))
  return np.concatenate(tables, axis=1)


def rope_apply(x, grid, freqs, start_frame=0):
  """x: [B, L, N, H] with tokens ordered (f, h, w) over grid (F, Hp, Wp)."""
  f, hp, wp = grid
  c = x.shape[-1] // 2
  ct, ch = c - 2 * (c // 3), c // 3
  ft, fh, fw = freqs[:, :ct], freqs[:, ct:ct + ch], freqs[:, ct + ch:]
  per_token = np.concatenate([
      np.broadcast_to(ft[start_frame:start_frame + f, None, None, :], (f, hp, wp, ct)),
      np.broadcast_to(fh[None, :hp, None, :], (f, hp, wp, ch)),
      np.broadcast_to(fw[None, None, :wp, :], (f, hp, wp, ch)),
  ], axis=-1).reshape(f * hp * wp, 1, c)
  xc = (x[..., 0::2] + 1j * x[..., 1::2]) * per_token
  out = np.empty_like(x)
  out[..., 0::2], out[..., 1::2] = xc.real, xc.imag
  return out


def rope_frames(x, frames, hp, wp, freqs):
  """rope_apply with any temporal position per frame: x [B, len(frames)*Hp*Wp, N, H]; frames: ints."""
  return np.concatenate([rope_apply(x[:, i * hp * wp:(i + 1) * hp * wp], (1, hp, wp), freqs, int(p))
                         for i, p in enumerate(frames)], axis=1) if len(frames) else x


def block_mask(num_frames, fsl, chunk, local):
  total = num_frames * fsl
  ends = np.zeros(total, np.int64)
  for start in range(0, total, fsl * chunk):
    ends[start:start + fsl * chunk] = start + fsl * chunk
  q = np.arange(total)[:, None]
  k = np.arange(total)[None, :]
  allowed = k < ends[:, None]
  if local != -1:
    allowed &= k >= ends[:, None] - local * fsl
  return allowed | (q == k)


def _attention(q, k, v, mask=None):
  logits = np.einsum("blnh,bsnh->bnls", q, k) / math.sqrt(q.shape[-1])
  if mask is not None:
    logits = np.where(mask, logits, -np.inf)
  logits -= logits.max(-1, keepdims=True)
  p = np.exp(logits)
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bnls,bsnh->blnh", p, v)


def forward_train(sd, args, x, t, context, *, chunk=3, cache=None, start_frame=0, layer_fn=None):
  """x: [B, C, F, H, W]; t: [B, F]; context: [B, Lc, text_dim]. Returns (flow like x, activations).

  With `cache` (the reference's KV-cache path): a list over layers of (rotated keys, values) [B, S, N, H] that the
  chunk attends to besides itself, with no mask, the chunk's keys rotated from `start_frame`; the chunk's own
  (rotated keys, values) per layer are returned in acts["kv"].
  With `layer_fn(i, q, k, v) -> (rotated q, all keys, all values)` (q, k pre-RoPE [B, L, N, H]) layer i's attention
  inputs come from it, no mask (a memory that decides inside the layer); acts["kv"] then holds pre-RoPE keys.
  """
  sd = {k: v.astype(np.float64) for k, v in sd.items()}
  x, t, context = x.astype(np.float64), t.astype(np.float64), context.astype(np.float64)
  d, n, eps = args["dim"], args["num_heads"], args["eps"]
  pt, ph, pw = args["patch_size"]
  hd = d // n
  b, c, f, h, w = x.shape
  hp, wp = h // ph, w // pw
  fsl = hp * wp
  acts = {}

  wgt = sd["patch_embedding.weight"][:, :, 0]  # [D, C, ph, pw]
  xr = x.reshape(b, c, f, hp, ph, wp, pw)
  emb = np.einsum("bcfhjwk,dcjk->bdfhw", xr, wgt) + sd["patch_embedding.bias"][None, :, None, None, None]
  acts["act_patch_embedding"] = emb
  tokens = emb.reshape(b, d, f * fsl).transpose(0, 2, 1)  # [B, L, D]

  half = args["freq_dim"] // 2
  omega = np.power(10000.0, -np.arange(half) / half)
  ang = np.outer(t.reshape(-1), omega)
  sinus = np.concatenate([np.cos(ang), np.sin(ang)], axis=1)
  e = _linear(sd, "time_embedding.2", _silu(_linear(sd, "time_embedding.0", sinus)))  # [B*F, D]
  e0 = _linear(sd, "time_projection.1", _silu(e))  # [B*F, 6D]
  acts["act_time_embedding"], acts["act_time_projection"] = e, e0
  e0 = e0.reshape(b, f, 6, d)

  ctx = np.concatenate([context, np.zeros((b, args["text_len"] - context.shape[1], context.shape[2]))], axis=1)
  text = _linear(sd, "text_embedding.2", _gelu_tanh(_linear(sd, "text_embedding.0", ctx)))
  acts["act_text_embedding"] = text

  freqs = rope_freqs(hd)
  mask = None if cache is not None or layer_fn is not None else block_mask(f, fsl, chunk, args.get("local_attn_size", -1))
  acts["kv"] = []
  frame_of_token = np.arange(f * fsl) // fsl
  for i in range(args["num_layers"]):
    p = f"blocks.{i}"
    m = sd[f"{p}.modulation"][0][None, None] + e0  # [B, F, 6, D]
    m = m[:, frame_of_token]  # [B, L, 6, D]
    hcur = _layer_norm(tokens, eps) * (1 + m[:, :, 1]) + m[:, :, 0]
    q = _rms_norm(_linear(sd, f"{p}.self_attn.q", hcur), eps, sd[f"{p}.self_attn.norm_q.weight"])
    k = _rms_norm(_linear(sd, f"{p}.self_attn.k", hcur), eps, sd[f"{p}.self_attn.norm_k.weight"])
    v = _linear(sd, f"{p}.self_attn.v", hcur)
    split = lambda a: a.reshape(b, -1, n, hd)  # noqa: E731
    grid = (f, hp, wp)
    if layer_fn is not None:
      q, k, v = split(q), split(k), split(v)
      acts["kv"].append((k, v))
      q, k, v = layer_fn(i, q, k, v)
    else:
      q, k, v = (rope_apply(split(q), grid, freqs, start_frame), rope_apply(split(k), grid, freqs, start_frame),
                 split(v))
      acts["kv"].append((k, v))
    if cache is not None and layer_fn is None:
      k, v = np.concatenate([cache[i][0], k], axis=1), np.concatenate([cache[i][1], v], axis=1)
    y = _linear(sd, f"{p}.self_attn.o", _attention(q, k, v, mask).reshape(b, -1, d))
    tokens = tokens + y * m[:, :, 2]
    hx = _layer_norm(tokens, eps, sd[f"{p}.norm3.weight"], sd[f"{p}.norm3.bias"])
    cq = _rms_norm(_linear(sd, f"{p}.cross_attn.q", hx), eps, sd[f"{p}.cross_attn.norm_q.weight"])
    ck = _rms_norm(_linear(sd, f"{p}.cross_attn.k", text), eps, sd[f"{p}.cross_attn.norm_k.weight"])
    cv = _linear(sd, f"{p}.cross_attn.v", text)
    tokens = tokens + _linear(sd, f"{p}.cross_attn.o", _attention(split(cq), split(ck), split(cv)).reshape(b, -1, d))
    hf = _layer_norm(tokens, eps) * (1 + m[:, :, 4]) + m[:, :, 3]
    ff = _linear(sd, f"{p}.ffn.2", _gelu_tanh(_linear(sd, f"{p}.ffn.0", hf)))
    tokens = tokens + ff * m[:, :, 5]
    acts[f"act_block{i}"] = tokens

  hm = sd["head.modulation"][None] + e.reshape(b, f, 1, d)  # [B, F, 2, D]
  hm = hm[:, frame_of_token]
  out = _linear(sd, "head.head", _layer_norm(tokens, eps) * (1 + hm[:, :, 1]) + hm[:, :, 0])  # [B, L, 64]
  acts["act_head"] = out.reshape(b, f, fsl, -1)
  cout = args["out_dim"]
  out = out.reshape(b, f, hp, wp, pt, ph, pw, cout)
  flow = out.transpose(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, cout, f * pt, hp * ph, wp * pw)
  if cache is None and layer_fn is None:
    del acts["kv"]
  return flow, acts


def scheduler_sigma(t, shift=5.0, n=1000):
  raw = np.linspace(1.0, 0.0, n + 1)[:-1]
  sigmas = shift * raw / (1 + (shift - 1) * raw)
  timesteps = sigmas * n
  idx = np.abs(timesteps[None, :] - np.asarray(t, np.float64).reshape(-1, 1)).argmin(1)
  return sigmas[idx].reshape(np.shape(t))


def random_state_dict(args, seed):
  """Random weights in the fixtures' style (N(0, 1/fan_in) weights, small biases, norm weights near 1)."""
  rng = np.random.default_rng(seed)
  d, ffn = args["dim"], args["ffn_dim"]
  pt, ph, pw = args["patch_size"]
  sd = {}

  def lin(name, din, dout):
    sd[f"{name}.weight"] = rng.normal(0, 1 / math.sqrt(din), (dout, din))
    sd[f"{name}.bias"] = rng.normal(0, 0.05, (dout,))

  sd["patch_embedding.weight"] = rng.normal(0, 1 / math.sqrt(args["in_dim"] * pt * ph * pw),
                                            (d, args["in_dim"], pt, ph, pw))
  sd["patch_embedding.bias"] = rng.normal(0, 0.05, (d,))
  lin("text_embedding.0", args["text_dim"], d)
  lin("text_embedding.2", d, d)
  lin("time_embedding.0", args["freq_dim"], d)
  lin("time_embedding.2", d, d)
  lin("time_projection.1", d, 6 * d)
  for i in range(args["num_layers"]):
    p = f"blocks.{i}"
    sd[f"{p}.modulation"] = rng.normal(0, 1, (1, 6, d)) / math.sqrt(d)
    for a in ("self_attn", "cross_attn"):
      for proj in "qkvo":
        lin(f"{p}.{a}.{proj}", d, d)
      sd[f"{p}.{a}.norm_q.weight"] = 1 + rng.normal(0, 0.2, (d,))
      sd[f"{p}.{a}.norm_k.weight"] = 1 + rng.normal(0, 0.2, (d,))
    sd[f"{p}.norm3.weight"] = 1 + rng.normal(0, 0.2, (d,))
    sd[f"{p}.norm3.bias"] = rng.normal(0, 0.1, (d,))
    lin(f"{p}.ffn.0", d, ffn)
    lin(f"{p}.ffn.2", ffn, d)
  sd["head.modulation"] = rng.normal(0, 1, (1, 2, d)) / math.sqrt(d)
  lin("head.head", d, args["out_dim"] * pt * ph * pw)
  return {k: v.astype(np.float32) for k, v in sd.items()}


def write_reference_folder(path, args, *, latent_hw, frames=6, batch=2, chunk=3, seed=0):
  """Writes a folder in the fixtures' format (config.json, model.safetensors, forward_train.npz, rope.npz)."""
  from safetensors.numpy import save_file
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(seed + 1)
  sd = random_state_dict(args, seed)
  save_file(sd, os.path.join(path, "model.safetensors"))
  h, w = latent_hw
  _, ph, pw = args["patch_size"]
  hp, wp = h // ph, w // pw
  x = rng.normal(size=(batch, args["in_dim"], frames, h, w)).astype(np.float32)
  t = np.array([[1000, 937.5, 833.3333, 625, 250, 0][:frames], [999, 500, 500, 500, 10, 3][:frames]][:batch],
               np.float32)
  valid = [args["text_len"] - 3, args["text_len"] - 5][:batch]
  context = rng.normal(size=(batch, args["text_len"], args["text_dim"])).astype(np.float32)
  for i, n in enumerate(valid):
    context[i, n:] = 0
  flow, acts = forward_train(sd, args, x, t, context, chunk=chunk)
  sigma = scheduler_sigma(t)[:, None, :, None, None]
  x0 = x.astype(np.float64) - sigma * flow
  f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
  np.savez(os.path.join(path, "forward_train.npz"), x=x, t=t, context=context, out=f32(flow), x0_pred=f32(x0),
           attn_mask=block_mask(frames, hp * wp, chunk, args.get("local_attn_size", -1)),
           grid_sizes=np.array([frames, hp, wp]), **{k: f32(v) for k, v in acts.items()})
  hd = args["dim"] // args["num_heads"]
  xr = rng.normal(size=(1, 3 * hp * wp, args["num_heads"], hd)).astype(np.float32)
  freqs = rope_freqs(hd)
  np.savez(os.path.join(path, "rope.npz"), x=xr, grid_sizes=np.array([[3, hp, wp]]),
           out_start0=f32(rope_apply(xr.astype(np.float64), (3, hp, wp), freqs, 0)),
           out_start7=f32(rope_apply(xr.astype(np.float64), (3, hp, wp), freqs, 7)),
           freqs_real=freqs.real, freqs_imag=freqs.imag)
  config = {"constructor_args": {**args, "patch_size": list(args["patch_size"])}, "latent_hw": list(latent_hw),
            "frame_seq_length": hp * wp, "num_frame_per_block": chunk, "forward_num_latent_frames": frames,
            "scheduler": {"shift": 5.0, "sigma_min": 0.0, "extra_one_step": True, "num_train_timesteps": 1000}}
  with open(os.path.join(path, "config.json"), "w") as fh:
    json.dump(config, fh, indent=2)
  return path


def next_input(x0, i, j, steps, renoise):
  """The input of a chunk's next call from call i's x0 (chunk j): re-noised towards step i+1 with draw
  j*(S-1)+i ([B*F, C, H, W]), or the x0 itself once the steps are done (the refill's input)."""
  if i >= len(steps) - 1:
    return x0
  sigma = scheduler_sigma(np.full((1,), steps[i + 1]))[0]
  return (1 - sigma) * x0 + sigma * renoise[j * (len(steps) - 1) + i].reshape(x0.shape)


def warped_steps(raw_steps, shift=5.0, n=1000):
  """Self-Forcing's warped step list, [timesteps, 0][n - raw], computed in float64 then stored as float32."""
  raw = np.linspace(1.0, 0.0, n + 1)[:-1]
  timesteps = np.append(shift * raw / (1 + (shift - 1) * raw) * n, 0.0)
  return np.asarray([timesteps[n - int(s)] for s in raw_steps], np.float32)


def rollout_window(sd, args, noise, context, renoise, steps, *, chunk):
  """The reference pipeline with Self-Forcing's KV cache (spec causal_wan.md §5-6), as a list of cached frames.

  noise: [B, frames, C, H, W]; renoise: [chunks * (S - 1), B * chunk, C, H, W]; steps: warped timesteps [S].
  The cache keeps rotated keys; before a chunk it drops the oldest non-sink frames so that, with the chunk, at most
  local_attn_size frames remain. Returns the arrays of a rollout.npz.
  """
  b, frames, c, h, w = noise.shape
  window, sink = args.get("local_attn_size", -1), args.get("sink_size", 0)
  layers = args["num_layers"]
  cache = []  # [(frame, [(k, v) per layer] with k, v [B, fsl, N, H])]
  sigma = lambda t: scheduler_sigma(np.full((1,), t))[0]  # noqa: E731
  out = {"final_latents": np.zeros_like(noise, np.float64), "call_x0_pred": [], "call_noisy_input": []}
  fsl = None
  for j in range(frames // chunk):
    if window != -1:
      keep = window - chunk - sink
      cache = [e for e in cache if e[0] < sink] + [e for e in cache if e[0] >= sink][-keep:] if keep > 0 else \
          [e for e in cache if e[0] < sink]
    mem = [tuple(np.concatenate([e[1][i][m] for e in cache], axis=1) for m in (0, 1)) for i in range(layers)] \
        if cache else [(np.zeros((b, 0, args["num_heads"], args["dim"] // args["num_heads"])),) * 2] * layers
    x = noise[:, j * chunk:(j + 1) * chunk].astype(np.float64)
    for i, t in enumerate(list(steps) + [0.0]):
      out["call_noisy_input"].append(x)
      flow, acts = forward_train(sd, args, x.transpose(0, 2, 1, 3, 4), np.full((b, chunk), t), context,
                                 chunk=chunk, cache=mem, start_frame=j * chunk)
      x0 = x - sigma(t) * flow.transpose(0, 2, 1, 3, 4)
      out["call_x0_pred"].append(x0)
      if i < len(steps) - 1:
        eps = renoise[j * (len(steps) - 1) + i].reshape(b, chunk, c, h, w)
        x = (1 - sigma(steps[i + 1])) * x0 + sigma(steps[i + 1]) * eps
      elif i == len(steps) - 1:
        out["final_latents"][:, j * chunk:(j + 1) * chunk] = x0
        x = x0
    fsl = acts["kv"][0][0].shape[1] // chunk
    for f in range(chunk):
      cache.append((j * chunk + f, [(k[:, f * fsl:(f + 1) * fsl], v[:, f * fsl:(f + 1) * fsl])
                                    for k, v in acts["kv"]]))
    held = cache if window == -1 else \
        [e for e in cache if e[0] < sink] + [e for e in cache if e[0] >= sink][-(window - sink):]
    for m, name in ((0, "k"), (1, "v")):
      out[f"kv_after_chunk{j}_{name}"] = np.stack(
          [np.concatenate([e[1][i][m] for e in held], axis=1) for i in range(layers)])
  f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
  return {k: f32(np.stack(v)[:, :, :, :]) if isinstance(v, list) else f32(v) for k, v in out.items()}


def write_rollout_folder(path, args, *, latent_hw, chunks, chunk, raw_steps, seed=0):
  """A folder in the fixtures' format holding a window rollout (config.json without a `memory` block)."""
  from safetensors.numpy import save_file
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(seed + 7)
  sd = random_state_dict(args, seed)
  save_file(sd, os.path.join(path, "model.safetensors"))
  h, w = latent_hw
  frames = chunks * chunk
  noise = rng.normal(size=(1, frames, args["in_dim"], h, w)).astype(np.float32)
  renoise = rng.normal(size=(chunks * (len(raw_steps) - 1), chunk, args["in_dim"], h, w)).astype(np.float32)
  context = rng.normal(size=(1, args["text_len"], args["text_dim"])).astype(np.float32)
  context[:, args["text_len"] - 2:] = 0
  steps = warped_steps(raw_steps)
  arrays = rollout_window(sd, args, noise, context, renoise, steps, chunk=chunk)
  np.savez(os.path.join(path, "rollout.npz"), noise=noise, context=context, renoise=renoise,
           denoising_step_list=steps, **arrays)
  _, ph, pw = args["patch_size"]
  config = {"constructor_args": {**args, "patch_size": list(args["patch_size"])}, "latent_hw": list(latent_hw),
            "frame_seq_length": (h // ph) * (w // pw), "num_frame_per_block": chunk,
            "pipeline_args": {"denoising_step_list": list(raw_steps), "warp_denoising_step": True,
                              "independent_first_frame": False, "context_noise": 0, "num_frame_per_block": chunk},
            "scheduler": {"shift": 5.0, "sigma_min": 0.0, "extra_one_step": True, "num_train_timesteps": 1000}}
  with open(os.path.join(path, "config.json"), "w") as fh:
    json.dump(config, fh, indent=2)
  return path


def rollout_conditioned(sd, args, noise, prompts, renoise, steps, *, chunk, window, sink, initial=None,
                        switches=(), global_sink=True):
  """The reference window pipeline with given initial frames (Self-Forcing's initial_latent) and prompt switches
  with LongLive's re-cache, written from the fixture READMEs' rules, in float64.

  noise [B, frames, C, H, W] (generated frames only); prompts [K, B, P, D]; initial [B, n0, C, H, W] or None.
  The cache is a list of entries {frame, kv per layer, prompt, sink}; before a chunk it keeps the sink entries and
  the newest `window - chunk - sink` others. A switch at chunk start c (>= its frame, one per chunk) re-runs the
  output frames st .. c-1 (st = c - min(window, c)) at t = 0 with the new prompt in one unmasked call, keeping the
  sink entries when global_sink and st > 0 (then frames st .. st+sink-1 are skipped: nothing would read them).
  """
  b, frames, c, h, w = noise.shape
  layers = args["num_layers"]
  n0 = 0 if initial is None else initial.shape[1]
  sigma = lambda t: scheduler_sigma(np.full((1,), t))[0]  # noqa: E731
  output = np.zeros((b, n0 + frames, c, h, w))
  if initial is not None:
    output[:, :n0] = initial
  cache = []

  def memory(entries):
    if not entries:
      return [(np.zeros((b, 0, args["num_heads"], args["dim"] // args["num_heads"])),) * 2] * layers
    return [tuple(np.concatenate([e["kv"][i][m] for e in entries], axis=1) for m in (0, 1)) for i in range(layers)]

  def run(x, t, ctx, entries, start):  # x [B, F, C, H, W] -> (x0, flow, the call's per-frame kv)
    f = x.shape[1]
    flow, acts = forward_train(sd, args, x.transpose(0, 2, 1, 3, 4), np.full((b, f), t), ctx, chunk=f,
                               cache=memory(entries), start_frame=start)
    flow = flow.transpose(0, 2, 1, 3, 4)
    fsl = acts["kv"][0][0].shape[1] // f
    per = [[(k[:, i * fsl:(i + 1) * fsl], v[:, i * fsl:(i + 1) * fsl]) for k, v in acts["kv"]] for i in range(f)]
    return x - sigma(t) * flow, flow, per

  def evict(new_frames):
    nonlocal cache
    if window == -1:
      return
    keep = window - new_frames - sum(e["sink"] for e in cache)
    rest = [e for e in cache if not e["sink"]]
    cache = [e for e in cache if e["sink"]] + (rest[-keep:] if keep > 0 else [])

  out = {"call_x0_pred": [], "kv_after_chunk": [], "init": [], "recache": []}
  blocks = ([(0, 1)] if n0 % chunk == 1 and chunk > 1 else [])
  blocks += [(i, chunk) for i in range(len(blocks), n0, chunk)]
  for first, count in blocks:
    evict(count)
    x0, flow, per = run(initial[:, first:first + count], 0.0, prompts[0], cache, first)
    cache += [{"frame": first + i, "kv": per[i], "prompt": 0, "sink": first + i < sink} for i in range(count)]
    out["init"].append({"x0": x0, "flow": flow, "cache": list(cache)})
  k, chunks = 0, frames // chunk
  chunk_prompt, switch_chunks = [], []
  for j in range(chunks):
    start = n0 + j * chunk
    if k < len(switches) and start >= switches[k]:
      k += 1
      switch_chunks.append(j)
      if start > 0:
        n = start if window == -1 else min(window, start)
        st = start - n
        keep = global_sink and st > 0
        first = st + sink if keep else st
        kept = [e for e in cache if e["sink"]] if keep else []
        _, _, per = run(output[:, first:start], 0.0, prompts[k], kept, first)
        cache = kept + [{"frame": first + i, "kv": per[i], "prompt": k, "sink": (not keep) and i < sink}
                        for i in range(start - first)]
        out["recache"].append({"frames": np.arange(st, start), "cache": list(cache)})
    chunk_prompt.append(k)
    evict(chunk)
    x = noise[:, j * chunk:(j + 1) * chunk].astype(np.float64)
    for i, t in enumerate(list(steps) + [0.0]):
      x0, _, per = run(x, t, prompts[k], cache, start)
      out["call_x0_pred"].append(x0)
      if i == len(steps) - 1:
        output[:, start:start + chunk] = x0
      x = next_input(x0, i, j, steps, renoise)
    cache += [{"frame": start + i, "kv": per[i], "prompt": k, "sink": start + i < sink} for i in range(chunk)]
    out["kv_after_chunk"].append(list(cache))
  return output, out, chunk_prompt, switch_chunks


def _cache_arrays(entries, slots, layers):
  """Entries in slot order (sinks first) -> k, v [L, B, slots*fsl, N, H] (zeros past them), frame and prompt tables."""
  entries = [e for e in entries if e["sink"]] + [e for e in entries if not e["sink"]]
  k0 = entries[0]["kv"][0][0]
  b, fsl, n, hd = k0.shape
  k = np.zeros((layers, b, slots * fsl, n, hd))
  v = np.zeros_like(k)
  for s, e in enumerate(entries):
    for i in range(layers):
      k[i, :, s * fsl:(s + 1) * fsl], v[i, :, s * fsl:(s + 1) * fsl] = e["kv"][i]
  frame = np.full(slots, -1)
  prompt = np.full(slots, -1)
  frame[:len(entries)] = [e["frame"] for e in entries]
  prompt[:len(entries)] = [e["prompt"] for e in entries]
  return k, v, frame, prompt


def write_conditioned_folder(path, args, *, latent_hw, chunks, chunk, window, sink, raw_steps, initial_frames=0,
                             prompts=1, switches=(), seed=0):
  """A folder in the LL format (prompts > 1: config `interactive`, rollout.npz with global_sink true and
  rollout_nogs.npz with false) or the I2V format (config `rollouts`), from `rollout_conditioned`."""
  from safetensors.numpy import save_file
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(seed + 11)
  sd = random_state_dict(args, seed)
  save_file(sd, os.path.join(path, "model.safetensors"))
  h, w = latent_hw
  c, layers, f32 = args["in_dim"], args["num_layers"], (lambda a: np.asarray(a, np.float32))
  noise = f32(rng.normal(size=(1, chunks * chunk, c, h, w)))
  renoise = f32(rng.normal(size=(chunks * (len(raw_steps) - 1), chunk, c, h, w)))
  ctx = f32(rng.normal(size=(prompts, 1, args["text_len"], args["text_dim"])))
  ctx[:, :, args["text_len"] - 2:] = 0
  initial = f32(rng.normal(size=(1, initial_frames, c, h, w))) if initial_frames else None
  steps = warped_steps(raw_steps)
  _, ph, pw = args["patch_size"]
  fsl = (h // ph) * (w // pw)
  memory = {"policy": "window", "window_frames": window, "sink_frames": sink}
  config = {"constructor_args": {**args, "patch_size": list(args["patch_size"])}, "latent_hw": list(latent_hw),
            "frame_seq_length": fsl, "num_frame_per_block": chunk, "memory": memory,
            "pipeline_args": {"denoising_step_list": list(raw_steps), "warp_denoising_step": True, "context_noise": 0,
                              "num_frame_per_block": chunk},
            "scheduler": {"shift": 5.0, "sigma_min": 0.0, "extra_one_step": True, "num_train_timesteps": 1000}}
  runs = [("rollout.npz", True), ("rollout_nogs.npz", False)] if prompts > 1 else [("rollout_cond.npz", True)]
  for name, global_sink in runs:
    output, out, chunk_prompt, switch_chunks = rollout_conditioned(
        sd, args, noise, ctx, renoise, steps, chunk=chunk, window=window, sink=sink, initial=initial,
        switches=list(switches), global_sink=global_sink)
    arrays = {"noise": noise, "renoise": renoise, "final_latents": f32(output),
              "call_x0_pred": f32(np.stack(out["call_x0_pred"])), "denoising_step_list": steps}
    caches = [_cache_arrays(e, window, layers) for e in out["kv_after_chunk"]]
    names = ("kv_after_chunk_k", "kv_after_chunk_v", "kv_after_chunk_slot_frame", "kv_after_chunk_slot_prompt")
    for i, key in enumerate(names[:4 if prompts > 1 else 3]):
      arrays[key] = np.stack([x[i] for x in caches]).astype(np.float32 if i < 2 else np.int64)
    if prompts > 1:
      arrays.update(prompt_embeds=ctx, switch_frame_indices=np.asarray(switches), chunk_prompt=np.asarray(chunk_prompt),
                    switch_chunk=np.asarray(switch_chunks),
                    switch_effective_frame=np.asarray([initial_frames + j * chunk for j in switch_chunks]))
      for s, rc in enumerate(out["recache"]):
        k, v, frame, prompt = _cache_arrays(rc["cache"], window, layers)
        arrays.update({f"recache{s}_frames": rc["frames"], f"recache{s}_kv_k": f32(k), f"recache{s}_kv_v": f32(v),
                       f"recache{s}_slot_frame": frame, f"recache{s}_slot_prompt": prompt,
                       f"recache{s}_input": f32(output[:, rc["frames"]])})
      config["interactive"] = {"switch_frame_indices": list(switches), "global_sink_rollout_npz": True,
                               "global_sink_rollout_nogs_npz": False}
    else:
      arrays.update(context=ctx[0], initial_latent=initial, output_frame_source=np.asarray(
          [0] * initial_frames + [1] * (chunks * chunk)))
      for i, init in enumerate(out["init"]):
        k, v, frame, _ = _cache_arrays(init["cache"], window, layers)
        arrays.update({f"init{i}_x0_pred": f32(init["x0"]), f"init{i}_flow_pred": f32(init["flow"]),
                       f"init{i}_kv_k": f32(k), f"init{i}_kv_v": f32(v), f"init{i}_slot_frame": frame})
      config["rollouts"] = {"cond": {"file": name, "num_initial_frames": initial_frames, "memory": memory}}
    np.savez(os.path.join(path, name), **arrays)
  with open(os.path.join(path, "config.json"), "w") as fh:
    json.dump(config, fh, indent=2)
  return path
