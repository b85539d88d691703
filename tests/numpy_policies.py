"""Independent float64 NumPy rollouts of Infinity-RoPE and Deep Forcing, written from the rules of
shared/fixtures/POLICIES2_README.md in upstream's own formulation (a slot buffer of pre-RoPE keys re-rotated at
every call; a token cache of post-RoPE keys turned in place), on `numpy_reference.forward_train`. They share no code
with rf_jax, and write reference folders of sizes the fixtures do not have (IR and DF formats).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from numpy_reference import (forward_train, next_input, random_state_dict, rope_freqs, rope_frames, scheduler_sigma,
                             warped_steps)


def _sigma(t):
  return scheduler_sigma(np.full((1,), t))[0]


def rollout_infinity(sd, args, noise, contexts, renoise, steps, *, chunk, window, sink, events, cut_frame=45):
  """events: {chunk: (scene, cut)} (every event flushes). noise [B, frames, C, H, W]; contexts [K, B, P, D]."""
  b, frames, c, h, w = noise.shape
  _, ph, pw = args["patch_size"]
  hp, wp = h // ph, w // pw
  fsl, n, hd = hp * wp, args["num_heads"], args["dim"] // args["num_heads"]
  freqs = rope_freqs(hd)
  layers = args["num_layers"]
  kbuf = [np.zeros((b, window * fsl, n, hd)) for _ in range(layers)]
  vbuf = [np.zeros((b, window * fsl, n, hd)) for _ in range(layers)]
  slot_frame = np.full(window, -1)
  local, glob, scene, cut = 0, 0, 0, False
  out = {k: [] for k in ("call_x0_pred", "call_q_rope_frames", "call_k_rope_frames", "call_kv_frames",
                         "call_evict_branch", "kv_after_chunk_k", "kv_after_chunk_v", "kv_after_chunk_slot_frame",
                         "kv_after_chunk_local_end", "chunk_flush", "chunk_cut", "chunk_scene")}
  final = np.zeros_like(noise, np.float64)
  sl = lambda s0, s1: slice(s0 * fsl, s1 * fsl)  # noqa: E731  frame slots -> token range
  for j in range(frames // chunk):
    flushed = j in events
    if flushed:  # KV Flush: slots 1, 2 <- the buffer's last two, the local end <- 3
      scene, cut = events[j]
      for buf in kbuf + vbuf:
        buf[:, sl(1, 3)] = buf[:, sl(window - 2, window)].copy()
      slot_frame[1:3] = slot_frame[window - 2:window].copy()
      local = 3
    else:
      cut = False
    out["chunk_flush"].append(flushed)
    out["chunk_cut"].append(cut)
    out["chunk_scene"].append(scene)
    start = j * chunk
    x = noise[:, start:start + chunk].astype(np.float64)
    for i, t in enumerate(list(steps) + [0.0]):
      evict = start + chunk > glob and chunk + local > window
      if evict:
        e = chunk + local - window
        r = local - e - sink
        for buf in kbuf + vbuf:
          buf[:, sl(sink, sink + r)] = buf[:, sl(sink + e, sink + e + r)].copy()
        slot_frame[sink:sink + r] = slot_frame[sink + e:sink + e + r].copy()
        new_local = local + (start + chunk) - glob - e
        qstart = window - chunk
      else:
        new_local = local + (start + chunk) - glob
        qstart = start if start < window else window - chunk
      m = new_local
      kpos = list(range(m))
      qpos = list(range(qstart, qstart + chunk))
      if cut:
        kpos = kpos[:m - 3] + [cut_frame, cut_frame + 1, cut_frame + 2]
        qpos = qpos[:chunk - 3] + [cut_frame, cut_frame + 1, cut_frame + 2]
      slot_frame[m - chunk:m] = np.arange(start, start + chunk)

      def layer_fn(li, q, k, v):
        kbuf[li][:, sl(m - chunk, m)] = k
        vbuf[li][:, sl(m - chunk, m)] = v
        keys = rope_frames(kbuf[li][:, :m * fsl], kpos, hp, wp, freqs)
        if m - chunk == 0:
          kbuf[li][:, :fsl] = keys[:, :fsl]  # the sink is stored rotated (at 0)
        else:
          keys[:, :fsl] = kbuf[li][:, :fsl]
        return rope_frames(q, qpos, hp, wp, freqs), keys, vbuf[li][:, :m * fsl]

      flow, _ = forward_train(sd, args, x.transpose(0, 2, 1, 3, 4), np.full((b, chunk), t), contexts[scene],
                              layer_fn=layer_fn)
      x0 = x - _sigma(t) * flow.transpose(0, 2, 1, 3, 4)
      out["call_x0_pred"].append(x0)
      out["call_q_rope_frames"].append(qpos)
      out["call_k_rope_frames"].append(np.pad([0] + kpos[1:], (0, window - m), constant_values=-1))
      out["call_kv_frames"].append(np.pad(slot_frame[:m], (0, window - m), constant_values=-1))
      out["call_evict_branch"].append(evict)
      glob, local = start + chunk, new_local
      if i == len(steps) - 1:
        final[:, start:start + chunk] = x0
      x = next_input(x0, i, j, steps, renoise)
    out["kv_after_chunk_k"].append(np.stack([kb[0] for kb in kbuf]))
    out["kv_after_chunk_v"].append(np.stack([vb[0] for vb in vbuf]))
    out["kv_after_chunk_slot_frame"].append(slot_frame.copy())
    out["kv_after_chunk_local_end"].append(local * fsl)
  arrays = {k: np.asarray(v) for k, v in out.items()}
  arrays["final_latents"] = final
  return arrays


def rollout_deep(sd, args, noise, context, renoise, steps, *, chunk, window, sink, capacity, recent, max_reuse):
  """Deep Forcing's token cache per layer (sizes in frames). noise [B=1, frames, C, H, W]; context [1, P, D]."""
  b, frames, c, h, w = noise.shape
  _, ph, pw = args["patch_size"]
  hp, wp = h // ph, w // pw
  fsl, n, hd = hp * wp, args["num_heads"], args["dim"] // args["num_heads"]
  freqs = rope_freqs(hd)
  ct = hd // 2 - 2 * (hd // 2 // 3)  # time pairs
  layers = args["num_layers"]
  size, cap, rwin, s_tok = window * fsl, capacity * fsl, recent * fsl, sink * fsl
  kc = [np.zeros((size, n, hd)) for _ in range(layers)]
  vc = [np.zeros((size, n, hd)) for _ in range(layers)]
  tok = [np.full(size, -1) for _ in range(layers)]
  cnt = [np.zeros(size, np.int64) for _ in range(layers)]
  local = [0] * layers
  base = [None] * layers
  shift = [0] * layers
  winq = [np.zeros((0, n, hd)) for _ in range(layers)]
  glob = 0
  top_width = (capacity - sink - recent) * fsl
  out = {k: [] for k in ("call_x0_pred", "call_compressed", "call_sink_delta", "call_kv_global_token",
                         "kv_after_chunk_k", "kv_after_chunk_v", "kv_after_chunk_global_token",
                         "kv_after_chunk_topc_counts", "pc_selected_idx", "pc_keep_idx", "pc_scores",
                         "chunk_compressed")}
  final = np.zeros_like(noise, np.float64)
  for j in range(frames // chunk):
    start = j * chunk
    x = noise[:, start:start + chunk].astype(np.float64)
    sel_rows, keep_rows, score_rows = [], [], []
    for i, t in enumerate(list(steps) + [0.0]):
      call = {"compressed": [], "delta": [], "tokens": []}

      def layer_fn(li, q, k, v):
        nonlocal glob
        frames_ = list(range(start, start + chunk))
        qr, kr = rope_frames(q, frames_, hp, wp, freqs)[0], rope_frames(k, frames_, hp, wp, freqs)[0]
        v = v[0]
        new = chunk * fsl
        winq[li] = np.concatenate([winq[li], qr])[-rwin:]
        rolled = (start + chunk) * fsl > glob and new + local[li] > size
        delta = 0
        if rolled:
          L = local[li]
          ka, va = np.concatenate([kc[li][:L], kr]), np.concatenate([vc[li][:L], v])
          ta = np.concatenate([tok[li][:L], start * fsl + np.arange(new)])
          ca = np.concatenate([cnt[li][:L], np.zeros(new, np.int64)])
          T = L + new
          r_eff = min(len(winq[li]), T)
          qs = winq[li][-r_eff:].sum(0).reshape(-1)
          scores = (ka.reshape(T, -1) @ qs) / (math.sqrt(hd) * n)
          scores[T - r_eff:] = -np.inf
          sk = min(s_tok, T)
          scores[:sk] = -np.inf
          total = min(max(min(cap, size), sk + r_eff), T)
          top_c = max(0, total - sk - r_eff)
          cand = list(range(min(sk, T - r_eff), T - r_eff))
          allowed = [u for u in cand if max_reuse < 0 or ca[u] < max_reuse]
          k_eff = min(top_c, len(cand), len(allowed))
          ranked = sorted(allowed, key=lambda u: (-scores[u], u))
          selected = sorted(ranked[:k_eff])
          keep = sorted(set(range(sk)) | set(selected) | set(range(T - r_eff, T)))
          kc[li][:], vc[li][:], tok[li][:], cnt[li][:] = 0, 0, -1, 0
          kc[li][:len(keep)], vc[li][:len(keep)], tok[li][:len(keep)] = ka[keep], va[keep], ta[keep]
          cnt[li][:len(keep)] = ca[keep] + np.asarray([u in selected for u in keep]) * (max_reuse > 0)
          local[li] = L = len(keep)
          sink_len = min(L, s_tok)
          tail_start = max(s_tok, L - size + s_tok)
          desired = start - (L - tail_start) // fsl - sink_len // fsl
          if sink > 0 and sink_len > 0:
            if base[li] is None:
              base[li], delta = desired, window - capacity
            else:
              delta = desired - base[li]
            if delta:
              mult = freqs[abs(delta), :ct]
              mult = mult if delta > 0 else np.conj(mult)
              z = kc[li][:sink_len, :, 0:2 * ct:2] + 1j * kc[li][:sink_len, :, 1:2 * ct:2]
              z = z * mult
              kc[li][:sink_len, :, 0:2 * ct:2], kc[li][:sink_len, :, 1:2 * ct:2] = z.real, z.imag
              base[li] = desired
              shift[li] += delta
          if i == 0:
            sel_rows.append(np.pad(selected, (0, top_width - len(selected)), constant_values=-1))
            keep_rows.append(np.pad(keep, (0, cap - len(keep)), constant_values=-1))
            score_rows.append(np.pad(scores.astype(np.float32), (0, size + new - T), constant_values=np.nan))
        else:
          L = local[li] + (start + chunk) * fsl - glob
          kc[li][L - new:L], vc[li][L - new:L] = kr, v
          tok[li][L - new:L] = start * fsl + np.arange(new)
          cnt[li][L - new:L] = 0
          local[li] = L
        L = local[li]
        call["compressed"].append(rolled)
        call["delta"].append(delta)
        call["tokens"].append(np.pad(tok[li][:L], (0, size - L), constant_values=-1))
        return qr[None], kc[li][None, :L], vc[li][None, :L]

      flow, _ = forward_train(sd, args, x.transpose(0, 2, 1, 3, 4), np.full((b, chunk), t), context,
                              layer_fn=layer_fn)
      glob = (start + chunk) * fsl
      x0 = x - _sigma(t) * flow.transpose(0, 2, 1, 3, 4)
      out["call_x0_pred"].append(x0)
      assert len(set(call["compressed"])) == 1 and len(set(call["delta"])) == 1  # the same in every layer here
      out["call_compressed"].append(call["compressed"][0])
      out["call_sink_delta"].append(call["delta"][0])
      out["call_kv_global_token"].append(np.stack(call["tokens"]))
      if i == len(steps) - 1:
        final[:, start:start + chunk] = x0
      x = next_input(x0, i, j, steps, renoise)
    compressed = bool(sel_rows)
    out["chunk_compressed"].append(compressed)
    out["pc_selected_idx"].append(np.stack(sel_rows) if compressed else np.full((layers, top_width), -1))
    out["pc_keep_idx"].append(np.stack(keep_rows) if compressed else np.full((layers, cap), -1))
    out["pc_scores"].append(np.stack(score_rows) if compressed else
                            np.full((layers, size + chunk * fsl), np.nan, np.float32))
    out["kv_after_chunk_k"].append(np.stack(kc))
    out["kv_after_chunk_v"].append(np.stack(vc))
    out["kv_after_chunk_global_token"].append(np.stack(tok))
    out["kv_after_chunk_topc_counts"].append(np.stack(cnt))
  arrays = {k: np.asarray(v) for k, v in out.items()}
  arrays["final_latents"] = final
  return arrays


def write_policy_folder(path, args, memory, *, latent_hw, chunks, chunk, raw_steps, events=None, seed=0):
  """A folder in the IR (memory policy infinity_rope, or window + window_relative) or DF format."""
  from safetensors.numpy import save_file
  os.makedirs(path, exist_ok=True)
  rng = np.random.default_rng(seed + 23)
  sd = random_state_dict(args, seed)
  save_file(sd, os.path.join(path, "model.safetensors"))
  h, w = latent_hw
  c, f32 = args["in_dim"], (lambda a: np.asarray(a, np.float32))
  scenes = 1 + len(events or {})
  noise = f32(rng.normal(size=(1, chunks * chunk, c, h, w)))
  renoise = f32(rng.normal(size=(chunks * (len(raw_steps) - 1), chunk, c, h, w)))
  ctx = f32(rng.normal(size=(scenes, 1, args["text_len"], args["text_dim"])))
  ctx[:, :, args["text_len"] - 2:] = 0
  steps = warped_steps(raw_steps)
  if memory["policy"] == "deep_forcing":
    arrays = rollout_deep(sd, args, noise, ctx[0], renoise, steps, chunk=chunk, window=memory["window_frames"],
                          sink=memory["sink_frames"], capacity=memory["capacity_frames"],
                          recent=memory["recent_frames"], max_reuse=memory["topc_max_reuse"])
  else:
    arrays = rollout_infinity(sd, args, noise, ctx, renoise, steps, chunk=chunk, window=memory["window_frames"],
                              sink=memory["sink_frames"], events=events or {})
    if events:
      memory = {**memory, "scene_events": [{"chunk": j, "flush": True, "rope_cut": cut, "scene": scene}
                                           for j, (scene, cut) in sorted(events.items())]}
  arrays = {k: (f32(v) if v.dtype.kind == "f" else v) for k, v in arrays.items()}
  np.savez(os.path.join(path, "rollout.npz"), noise=noise, renoise=renoise, denoising_step_list=steps,
           context=ctx if events else ctx[0], **arrays)
  _, ph, pw = args["patch_size"]
  config = {"constructor_args": {**args, "patch_size": list(args["patch_size"])}, "latent_hw": list(latent_hw),
            "frame_seq_length": (h // ph) * (w // pw), "num_frame_per_block": chunk, "memory": memory,
            "pipeline_args": {"denoising_step_list": list(raw_steps), "warp_denoising_step": True, "context_noise": 0,
                              "num_frame_per_block": chunk},
            "scheduler": {"shift": 5.0, "sigma_min": 0.0, "extra_one_step": True, "num_train_timesteps": 1000}}
  with open(os.path.join(path, "config.json"), "w") as fh:
    json.dump(config, fh, indent=2)
  return path
