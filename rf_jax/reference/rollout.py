"""The rollout parity check of `rf-jax check-reference`: replay a reference folder's `rollout.npz` with its memory policy.

The folder's noise, re-noise draws and text context are fed in; the run goes chunk by chunk so the memory can be
inspected after each one. Compared (when the folder has them): the final latents and every call's x0; for a
window, the cache after each chunk; for Relax Forcing, every candidate list, score, prototype, selection, and the
frame and RoPE position of every attended key; for Context Forcing's upstream mode, every similarity, promotion,
slot table and the cache after each chunk.

Fixture layouts: latents [B, F, C, H, W] (ours [B, F, H, W, C]); caches in upstream slot order, token-major.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import jax.numpy as jnp
import numpy as np

from rf_jax.config import memory_args_from_constructor_args
from rf_jax.memory import DeepForcingPolicy, InfinityRoPEPolicy, Policy, RelaxPolicy, SlowFastUpstreamPolicy, WindowPolicy, policy_from_dict
from rf_jax.model.rope import apply_rope, rope_cos_sin
from rf_jax.reference.compare import Comparison, channels_last, max_abs_error, mismatch
from rf_jax.reference.folder import ReferenceFolder
from rf_jax.reference.deep_forcing import USED as DEEP_USED, check_deep_forcing
from rf_jax.reference.infinity_rope import USED as INFINITY_USED, check_infinity_rope
from rf_jax.reference.replay import folder_noise, replay_chunks
from rf_jax.sampling import Rollout, Sampler


def folder_policy(ref: ReferenceFolder) -> Policy:
  """The `memory` block of config.json, else a window from constructor_args (local_attn_size, sink_size). Scene
  events (Infinity-RoPE) are the rollout's, not the policy's: `rf_jax.reference.infinity_rope` reads them."""
  if "memory" in ref.config:
    block = ref.config["memory"]
    if block.get("policy") == "deep_forcing" and block.get("topc_max_reuse") == 0:  # upstream's "no limit"
      return policy_from_dict({**block, "topc_max_reuse": -1}, source=f"{ref.path}/config.json: memory")
    if "scene_events" in ref.config["memory"]:
      return policy_from_dict({k: v for k, v in ref.config["memory"].items() if k != "scene_events"},
                              source=f"{ref.path}/config.json: memory")
    return policy_from_dict(ref.config["memory"], source=f"{ref.path}/config.json: memory")
  local, sink = memory_args_from_constructor_args(ref.config["constructor_args"])
  return WindowPolicy(window_frames=local, sink_frames=sink)


def folder_sampler(ref: ReferenceFolder) -> Sampler:
  args = ref.config.get("pipeline_args", {})
  shift = ref.config.get("scheduler", {}).get("shift", args.get("timestep_shift", 5.0))
  if args.get("independent_first_frame", False):
    raise ValueError(f"{ref.path}: independent_first_frame=true is not supported")
  return Sampler.from_steps(args.get("denoising_step_list", (1000, 750, 500, 250)),
                            warp=bool(args.get("warp_denoising_step", True)), shift=float(shift),
                            context_noise=float(args.get("context_noise", 0)), chunk_frames=ref.chunk_frames)


# Arrays a rollout.npz may hold that are inputs, restate the schedule, or are implied by compared arrays.
_USED = {"noise", "renoise", "context", "denoising_step_list_raw", "sched_sigmas", "sched_timesteps",
         "call_noisy_input", "call_timestep", "call_flow_pred", "call_current_start", "call_chunk",
         "call_global_end_index", "call_local_end_index", "chunk0_step_x0_pred", "kv0_after_chunk_local_end",
         "chunk_local_start_frame", "chunk_selected_hist_middle_idx", "chunk_candidate_middle_idx",
         "call_sink_rope_frames", "call_rest_rope_start", "call_rest_rope_frames"}


def unchecked_arrays(z: dict, results: list[Comparison]) -> list[str]:
  """Arrays of rollout.npz that this version neither used nor compared (reported, never silently skipped)."""
  compared = {r.name.split("/", 1)[1] for r in results if r.name.startswith("rollout/")}
  return sorted(k for k in z if k not in compared and k not in _USED | INFINITY_USED | DEEP_USED)


@dataclasses.dataclass(frozen=True)
class ForcedRelax(RelaxPolicy):
  """Relax Forcing with the history frame of every chunk imposed (the fixtures' `*_force_*` variants)."""
  forced: tuple[int, ...] = ()  # per chunk, the history frame to use (-1: chunks without a selection)

  def choose(self, scores, cand_ok, cand_frame, chunk):
    want = jnp.asarray(self.forced, jnp.int32)[chunk.start // chunk.frames]
    idx = jnp.argmax(cand_ok & (cand_frame == want))
    return jnp.broadcast_to(idx, (scores.shape[0], 1))


def check_rollout(ref: ReferenceFolder, z: dict, model, abs_tol: float) -> Iterator[Comparison]:
  policy = folder_policy(ref)
  if isinstance(policy, InfinityRoPEPolicy):
    yield from check_infinity_rope(ref, z, model, folder_sampler(ref), abs_tol)
    return
  if isinstance(policy, DeepForcingPolicy):
    yield from check_deep_forcing(ref, z, model, policy, folder_sampler(ref), abs_tol)
    return
  yield from _check_rollout(ref, z, model, policy, abs_tol)
  if isinstance(policy, RelaxPolicy) and policy.history_frames == 1:
    for key in sorted(k for k in z if k.startswith("chunk_selected_hist_frame_force_")):
      variant = key[len("chunk_selected_hist_frame_force_"):]
      if f"final_latents_force_{variant}" not in z:
        continue
      forced = ForcedRelax(**{f.name: getattr(policy, f.name) for f in dataclasses.fields(RelaxPolicy)},
                           forced=tuple(int(x) for x in z[key]))
      sub = {k: z[k] for k in ("noise", "renoise", "context")}
      sub["final_latents"] = z[f"final_latents_force_{variant}"]
      sub["chunk_selected_hist_frame"] = z[key]
      for c in _check_rollout(ref, sub, model, forced, abs_tol):
        if c.name == "rollout/final_latents":
          yield dataclasses.replace(c, name=f"rollout/final_latents_force_{variant}")
        elif c.name == "rollout/chunk_selected_hist_frame":
          yield dataclasses.replace(c, name=f"rollout/{key}")


def _check_rollout(ref: ReferenceFolder, z: dict, model, policy: Policy, abs_tol: float) -> Iterator[Comparison]:
  sampler = folder_sampler(ref)
  f = sampler.chunk_frames
  steps = len(sampler.timesteps)
  if "denoising_step_list" in z:
    yield Comparison("rollout/denoising_step_list", max_abs_error(np.asarray(sampler.timesteps),
                                                                   z["denoising_step_list"]), abs_tol, "max_abs")
  noise = folder_noise(z, f, steps)
  b, frames, hl, wl, _ = noise.noise.shape
  rollout = Rollout(model, policy, sampler, batch=b, latent_hw=(hl, wl), frames=frames, record_calls=True)
  outs, states = replay_chunks(rollout, z, noise)

  latents = np.concatenate([o.latents for o in outs], axis=1)
  yield Comparison("rollout/final_latents", max_abs_error(latents, channels_last(z["final_latents"])), abs_tol, "max_abs")
  if "call_x0_pred" in z:
    call_x0 = np.concatenate([o.call_x0 for o in outs])  # [calls, B, F, H, W, C]
    yield Comparison("rollout/call_x0_pred", max_abs_error(call_x0, channels_last(z["call_x0_pred"])), abs_tol, "max_abs")
  if isinstance(policy, WindowPolicy):
    yield from _check_window(ref, z, policy, states, f, abs_tol)
  elif isinstance(policy, RelaxPolicy):
    yield from _check_relax(ref, z, policy, outs, states, f, abs_tol)
  elif isinstance(policy, SlowFastUpstreamPolicy):
    yield from _check_slow_fast(ref, z, policy, outs, states, f, abs_tol)


def _check_window(ref, z, policy: WindowPolicy, states, f, tol) -> Iterator[Comparison]:
  """kv_after_chunk{j}_k/v: [L, B, tokens, N, H], keys after RoPE at absolute positions, slots in frame order."""
  q = int(ref.config.get("frame_seq_length", 0)) or None
  for j, res in enumerate(states):
    key_k, key_v = f"kv_after_chunk{j}_k", f"kv_after_chunk{j}_v"
    if key_k not in z:
      continue
    ref_k, ref_v = z[key_k], z[key_v]
    l, bb, tokens, n, h = ref_k.shape
    q = q or res.k.shape[4]
    held = tokens // q
    end = f * (j + 1)  # frames 0 .. end-1 generated so far
    s = min(policy.sink_frames, held)
    ref_frames = list(range(s)) + list(range(end - (held - s), end))  # upstream: sink, then the newest, in order
    ours = {int(fr): i for i, fr in enumerate(res.frame[0]) if fr >= 0}
    common = [(slot, ours[fr], fr) for slot, fr in enumerate(ref_frames) if fr in ours]
    # ours: head-major, keys already rotated at their frame index, as upstream caches them
    mk = np.stack([np.moveaxis(res.k[:, :, :, ours_i], 2, 3) for _, ours_i, _ in common], axis=2)  # [L, B, n, Q, N, H]
    mv = np.stack([np.moveaxis(res.v[:, :, :, ours_i], 2, 3) for _, ours_i, _ in common], axis=2)
    rk = ref_k.reshape(l, bb, held, q, n, h)[:, :, [slot for slot, *_ in common]]
    rv = ref_v.reshape(l, bb, held, q, n, h)[:, :, [slot for slot, *_ in common]]
    yield Comparison(f"rollout/{key_k}", max_abs_error(mk, rk), tol, "max_abs")
    yield Comparison(f"rollout/{key_v}", max_abs_error(mv, rv), tol, "max_abs")


def _grid(ref: ReferenceFolder) -> tuple[int, int]:
  hl, wl = ref.config["latent_hw"]
  _, ph, pw = ref.model_config.patch_size
  return hl // ph, wl // pw


def _check_relax(ref, z, policy: RelaxPolicy, outs, states, f, tol) -> Iterator[Comparison]:
  tr = {k: np.stack([o.trace[k] for o in outs]) for k in outs[0].trace}  # chunk-major
  chunks = len(outs)
  relaxed = ~tr["dense"]
  exact = lambda name, out: Comparison(f"rollout/{name}", mismatch(out, z[name]), 0.0, "mismatch")  # noqa: E731
  history = np.where(relaxed, tr["history"][:, 0, 0], -1)
  if "chunk_selected_hist_frame" in z:
    yield exact("chunk_selected_hist_frame", history)
  if "chunk_num_middle_frames" in z:
    yield exact("chunk_num_middle_frames", tr["num_middle"])
  if "chunk_num_candidates" in z:
    yield exact("chunk_num_candidates", (tr["candidates"] >= 0).sum(-1))
  if "chunk_candidate_frames" in z:
    width = z["chunk_candidate_frames"].shape[1]
    yield exact("chunk_candidate_frames", _pad(tr["candidates"], width, -1))
  if "chunk_candidate_scores" in z:
    width = z["chunk_candidate_scores"].shape[1]
    yield Comparison("rollout/chunk_candidate_scores",
                     max_abs_error(_pad(tr["scores"][:, 0], width, np.nan), z["chunk_candidate_scores"]), tol, "max_abs")
  nan = np.full_like(tr["sink_proto"][:, 0], np.nan)
  for ours, name in ((tr["sink_proto"][:, 0], "chunk_sink_proto"), (tr["tail_proto"][:, 0], "chunk_tail_proto")):
    if name in z:
      yield Comparison(f"rollout/{name}", max_abs_error(np.where(relaxed[:, None], ours, nan), z[name]), tol,
                       "max_abs")
  if "chunk_candidate_protos" in z:
    cp = tr["candidate_protos"][:, 0]  # [chunks, C, H]
    ok = relaxed[:, None] & (tr["candidates"] >= 0)
    cp = np.where(ok[..., None], cp, np.nan)
    yield Comparison("rollout/chunk_candidate_protos", max_abs_error(_pad(cp, z["chunk_candidate_protos"].shape[1],
                                                                         np.nan, axis=1),
                                                                    z["chunk_candidate_protos"]), tol, "max_abs")
  # Every call of a chunk attends the same keys: [memory frames..., chunk frames], upstream order.
  calls = len(z.get("call_chunk", np.arange(chunks * (len(outs[0].calls) or 5))))
  per_chunk = calls // chunks
  width = z["call_kv_global_frames"].shape[1] if "call_kv_global_frames" in z else 0
  g_rows, p_rows = [], []
  for j in range(chunks):
    frames, pos = tr["memory_frames"][j, 0], tr["memory_positions"][j, 0]
    keep = frames >= 0
    g = list(frames[keep]) + list(range(f * j, f * j + f))
    p = list(pos[keep]) + list(tr["chunk_positions"][j])
    g_rows += [_pad(np.asarray(g), width, -1)] * per_chunk
    p_rows += [_pad(np.asarray(p), width, -1)] * per_chunk
  if "call_kv_global_frames" in z:
    yield exact("call_kv_global_frames", np.stack(g_rows))
  if "call_kv_rope_frames" in z:
    yield exact("call_kv_rope_frames", np.stack(p_rows))
  if "call_num_kv_frames" in z:
    yield exact("call_num_kv_frames", np.repeat((tr["memory_frames"][:, 0] >= 0).sum(-1) + f, per_chunk))
  if "call_relaxed" in z:
    yield exact("call_relaxed", np.repeat(relaxed, per_chunk))
  if "call_q_rope_start" in z:
    yield exact("call_q_rope_start", np.repeat(tr["chunk_positions"][:, 0], per_chunk))
  if "kv0_after_chunk_k" in z:
    ref_k = z["kv0_after_chunk_k"]  # [chunks, slots*Q, N, H], layer 0, upstream slot order, zero past local end
    ends = z["kv0_after_chunk_local_end"]
    hd = ref.model_config.head_dim
    worst = 0.0
    for j, res in enumerate(states):
      q = res.k.shape[4]
      held = int(ends[j]) // q
      end_frame = f * (j + 1)
      rk = ref_k[j].reshape(-1, q, *ref_k.shape[2:])
      ours = {int(fr): i for i, fr in enumerate(res.frame[0]) if fr >= 0}
      for slot in range(held):
        fr = slot if slot < policy.sink_frames else slot + end_frame - held
        if fr in ours:  # upstream caches pre-RoPE keys; ours are turned at the frame index: turn them back
          cos, sin = rope_cos_sin(jnp.asarray([fr]), _grid(ref), hd)
          mine = np.asarray(apply_rope(jnp.asarray(np.moveaxis(res.k[0, 0, :, ours[fr]], 0, 1))[None], cos, -sin))
          worst = max(worst, max_abs_error(mine[0], rk[slot]))
    yield Comparison("rollout/kv0_after_chunk_k", worst, tol, "max_abs")


def _check_slow_fast(ref, z, policy: SlowFastUpstreamPolicy, outs, states, f, tol) -> Iterator[Comparison]:
  exact = lambda name, out: Comparison(f"rollout/{name}", mismatch(out, z[name]), 0.0, "mismatch")  # noqa: E731
  s, kslow = policy.sink_frames, policy.slow_frames
  sims = np.concatenate([o.calls["similarity"] for o in outs])  # [calls, L]
  promoted = np.stack([o.calls["promoted"] for o in outs])  # [chunks, calls/chunk, L]
  tables, counts = [], []
  for j, o in enumerate(outs):
    end = int(o.trace["local_end"])
    for t in o.calls["table"]:  # the chunk's own frames sit in its slots during every call
      t = t.copy()
      t[:, end - f:end] = np.arange(f * j, f * j + f)
      tables.append(t)
    counts.append(o.calls["slow_count"])
  if "call_sim" in z:
    yield Comparison("rollout/call_sim", max_abs_error(sims, z["call_sim"]), tol, "max_abs")
  if "chunk_promotion_call" in z:
    first = np.where(promoted.any(1), promoted.argmax(1), -1)  # [chunks, L]
    yield exact("chunk_promotion_call", first)
    if "chunk_promoted_frame" in z:
      yield exact("chunk_promoted_frame", np.where(first >= 0, f * np.arange(len(outs))[:, None], -1))
  if "call_token_source_frame" in z:
    yield exact("call_token_source_frame", np.stack(tables))
  if "call_num_slow_frames" in z:
    yield exact("call_num_slow_frames", np.concatenate(counts))
  if "chunk_slow_frames" in z:
    yield exact("chunk_slow_frames", np.stack([st.table[:, s:s + kslow] for st in states]))
  per_chunk = len(outs[0].calls["similarity"])
  if "call_num_kv_frames" in z:
    yield exact("call_num_kv_frames", np.repeat([int(o.trace["local_end"]) for o in outs], per_chunk))
  if "call_q_rope_start" in z:
    yield exact("call_q_rope_start", np.repeat([int(o.trace["chunk_positions"][0]) for o in outs], per_chunk))
  cos, sin = rope_cos_sin(jnp.zeros((), jnp.int32), _grid(ref), ref.model_config.head_dim)  # [Q, H/2]

  def upstream_layout(st, a, turn_back):  # [L, B, N, R, Q, H] at frame 0 -> pre-RoPE [L, R*Q, N, H] of sample 0
    a = np.moveaxis(a[:, 0], 1, 3)  # [L, R, Q, N, H]
    if turn_back:
      a = np.asarray(apply_rope(jnp.asarray(a), cos, -sin))
    return a.reshape(a.shape[0], -1, *a.shape[-2:])

  for name, pick, turn in (("kv_after_chunk_k", lambda st: st.k, True), ("kv_after_chunk_v", lambda st: st.v, False)):
    if name in z:
      ours = np.stack([upstream_layout(st, pick(st), turn) for st in states])
      yield Comparison(f"rollout/{name}", max_abs_error(ours, z[name]), tol, "max_abs")


def _pad(a: np.ndarray, width: int, value, axis: int = -1) -> np.ndarray:
  a = np.asarray(a)
  axis = axis % a.ndim
  have = a.shape[axis]
  if have >= width:
    return np.take(a, np.arange(width), axis=axis)
  widths = [(0, 0)] * a.ndim
  widths[axis] = (0, width - have)
  return np.pad(a.astype(np.result_type(a.dtype, np.asarray(value).dtype)), widths, constant_values=value)
