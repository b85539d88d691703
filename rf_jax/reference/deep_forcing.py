"""The Deep Forcing parity check (fixture `DF`): per layer, token by token, every compression and the sink's turns.

Compared: final latents, every call's x0 and timestep; per call its ends (every layer), whether it compressed, the
sink's turn and start, the token and RoPE position of every attended key in attention order (per layer); per chunk
each compression's sizes, scores, reuse counts, candidates, selection, kept list, exclusions and deciding margin
(per layer); the cache after every chunk (keys at their positions, values, tokens, counts, positions, end, sink).
Integer arrays must match exactly; lists are compared at the fixture's width after checking that nothing of ours
lies past it.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from rf_jax.memory import DeepForcingPolicy
from rf_jax.reference.compare import Checks, Comparison
from rf_jax.reference.folder import ReferenceFolder
from rf_jax.reference.replay import folder_noise, replay_chunks
from rf_jax.sampling import Rollout

USED = {"noise", "renoise", "context", "denoising_step_list_raw", "sched_sigmas", "sched_timesteps",
        "call_noisy_input", "call_flow_pred", "call_chunk"}


def _fit(a: np.ndarray, width: int, fill) -> np.ndarray:
  """a [..., w] at the fixture's width; an entry of ours past it that is not `fill` turns the row into -2s."""
  a = np.asarray(a)
  if a.shape[-1] <= width:
    pad = [(0, 0)] * (a.ndim - 1) + [(0, width - a.shape[-1])]
    return np.pad(a.astype(np.result_type(a.dtype, np.asarray(fill).dtype)), pad, constant_values=fill)
  extra = a[..., width:]
  lost = ~np.all((extra == fill) | (np.isnan(extra) & np.isnan(fill)) if np.issubdtype(a.dtype, np.floating)
                 else extra == fill, axis=-1)
  out = a[..., :width].copy()
  out[lost] = -2
  return out


def check_deep_forcing(ref: ReferenceFolder, z: dict, model, policy: DeepForcingPolicy, sampler,
                       abs_tol: float) -> Iterator[Comparison]:
  checks = Checks(z, abs_tol)
  score_tol = max(abs_tol, 1e-5)
  f = sampler.chunk_frames
  steps = len(sampler.timesteps)
  noise = folder_noise(z, f, steps)
  b, frames, hl, wl, _ = noise.noise.shape
  chunks = frames // f
  rollout = Rollout(model, policy, sampler, batch=b, latent_hw=(hl, wl), frames=frames, record_calls=True)
  outs, states = replay_chunks(rollout, z, noise)
  q = rollout.geometry.frame_tokens
  per_chunk = steps + 1
  out = []
  add = lambda c_: out.append(c_) if c_ is not None else None  # noqa: E731
  add(checks.max_abs("denoising_step_list", np.asarray(sampler.timesteps, np.float32)))
  add(checks.latent("final_latents", np.concatenate([o.latents for o in outs], axis=1)))
  add(checks.latent("call_x0_pred", np.concatenate([o.call_x0 for o in outs])))
  t = np.tile(np.append(np.asarray(sampler.timesteps), sampler.context_noise), chunks)
  add(checks.max_abs("call_timestep", np.broadcast_to(t[:, None, None], (len(t), b, f))))
  add(checks.exact("call_current_start", np.repeat(np.arange(chunks) * f * q, per_chunk)))
  calls = {k: np.concatenate([o.calls[k] for o in outs]) for k in outs[0].calls}  # [calls, L, B, ...]
  n_layers = calls["end"].shape[1]

  def every_layer(name, ours):  # a per-call scalar of the fixture, held by every layer of ours (sample 0)
    if name in z:
      want = np.broadcast_to(np.asarray(z[name])[:, None], ours.shape)
      out.append(Comparison(name, float(np.mean(ours != want)), 0.0, "mismatch"))

  every_layer("call_local_end_index", calls["end"][:, :, 0])
  every_layer("call_local_end_before", calls["end_before"][:, :, 0])
  every_layer("call_num_kv_tokens", calls["end"][:, :, 0])
  every_layer("call_compressed", calls["compressed"][:, :, 0])
  every_layer("call_sink_delta", calls["delta"][:, :, 0])
  every_layer("call_sink_rope_start", calls["sink_shift"][:, :, 0])
  add(checks.exact("call_global_end_index", calls["global_end"]))
  add(checks.exact("call_q_rope_start", np.repeat(np.arange(chunks) * f, per_chunk)))
  if "call_kv_global_token" in z:
    width = z["call_kv_global_token"].shape[-1]
    add(checks.exact("call_kv_global_token", _fit(calls["kv_token"][:, :, 0], width, -1)))
    add(checks.exact("call_kv_rope_frame", _fit(np.where(calls["kv_token"] >= 0, calls["kv_position"], -1)[:, :, 0],
                                                width, -1)))
  first = {k: v[::per_chunk] for k, v in calls.items()}  # each chunk's first call: where it compresses
  comp = first["compressed"][:, :, 0]  # [chunks, L]
  add(checks.exact("chunk_compressed", comp[:, 0]))
  sizes = first["sizes"][:, 0, 0]  # [chunks, 4], layer 0 (the same in every layer when it compresses)
  if all(np.array_equal(first["sizes"][:, layer, 0], sizes) for layer in range(n_layers)):
    for i, name in enumerate(("pc_num_tokens", "pc_recent_tokens", "pc_sink_tokens", "pc_top_c")):
      add(checks.exact(name, sizes[:, i]))
  else:
    for name in ("pc_num_tokens", "pc_recent_tokens", "pc_sink_tokens", "pc_top_c"):
      out.append(Comparison(name, 1.0, 0.0, "mismatch"))  # the layers disagree: upstream's single value cannot hold
  for name, key, fill in (("pc_counts_before", "counts_before", -1), ("pc_candidate_global_token", "candidates", -1),
                          ("pc_selected_idx", "selected", -1), ("pc_keep_idx", "keep", -1)):
    if name in z:
      add(checks.exact(name, _fit(first[key][:, :, 0], z[name].shape[-1], fill)))
  if "pc_scores" in z:
    add(Comparison("pc_scores", _max_abs_inf(_fit(first["scores"][:, :, 0], z["pc_scores"].shape[-1], np.nan),
                                             z["pc_scores"]), score_tol, "max_abs"))
  if "pc_selected_global_token" in z:
    cand, sel = first["candidates"][:, :, 0], first["selected"][:, :, 0]
    tok = np.where(sel >= 0, np.take_along_axis(cand, np.maximum(sel, 0), axis=-1), -1)
    add(checks.exact("pc_selected_global_token", _fit(tok, z["pc_selected_global_token"].shape[-1], -1)))
    cnt = np.where(sel >= 0, np.take_along_axis(first["counts_before"][:, :, 0], np.maximum(sel, 0), axis=-1), -1)
    add(checks.exact("pc_selected_count_before", _fit(cnt, z["pc_selected_count_before"].shape[-1], -1)))
    keep = first["keep"][:, :, 0]
    ktok = np.where(keep >= 0, np.take_along_axis(cand, np.maximum(keep, 0), axis=-1), -1)
    add(checks.exact("pc_keep_global_token", _fit(ktok, z["pc_keep_global_token"].shape[-1], -1)))
  add(checks.exact("pc_num_excluded_by_reuse", first["excluded"][:, :, 0]))
  if "pc_deciding_margin" in z:
    add(Comparison("pc_deciding_margin", _max_abs_inf(first["margin"][:, :, 0], z["pc_deciding_margin"]), score_tol,
                   "max_abs"))
  width = states[0].token.shape[-1]
  tr = {k: np.stack([o.trace[k] for o in outs]) for k in outs[0].trace}  # [chunks, L, B, ...]
  add(checks.exact("kv_after_chunk_global_token", _fit(tr["token"][:, :, 0], z.get("kv_after_chunk_global_token",
                                                                                     np.zeros((1, width))).shape[-1], -1)))
  add(checks.exact("kv_after_chunk_topc_counts", tr["count"][:, :, 0]))
  add(checks.exact("kv_after_chunk_abs_frame_idx", np.where(tr["token"] >= 0, tr["position"], -1)[:, :, 0]))
  every_chunk = lambda name, ours: every_layer(name, ours)  # noqa: E731
  every_chunk("kv_after_chunk_local_end", tr["local_end"][:, :, 0])
  every_chunk("kv_after_chunk_sink_rope_start", tr["sink_shift"][:, :, 0])
  for name, key in (("kv_after_chunk_k", "k"), ("kv_after_chunk_v", "v")):
    ours = np.stack([np.moveaxis(getattr(st, key)[:, 0], 1, 2) for st in states])  # [chunks, L, T, N, H]
    add(checks.max_abs(name, ours))
  for c_ in out:
    yield Comparison("rollout/" + c_.name, c_.value, c_.tolerance, c_.metric)


def _max_abs_inf(out: np.ndarray, ref: np.ndarray) -> float:
  """max |out - ref| where both are finite; inf where their NaN or infinity patterns differ."""
  out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
  if out.shape != ref.shape:
    return float("inf")
  same = (np.isnan(out) == np.isnan(ref)) & (np.isposinf(out) == np.isposinf(ref)) & (np.isneginf(out) == np.isneginf(ref))
  if not same.all():
    return float("inf")
  finite = np.isfinite(ref)
  return float(np.max(np.abs(out[finite] - ref[finite]), initial=0.0))
