"""The Infinity-RoPE parity check (fixtures `IR`, `IR_cut`): upstream's slot buffer, its positions and its scene
events, replayed chunk by chunk.

config.json's `memory` block is {"policy": "infinity_rope" | "window" with positions "window_relative", ...}, with
optional `scene_events` [{chunk, flush, rope_cut, scene}] (`scene`: the index of the context used from that chunk
on). Each event becomes a switch of `PromptSchedule` at the chunk's first frame (a cut where `rope_cut`), run with
`Recache.FLUSH` where `flush`. The replay steps the rollout by hand to read the memory after every chunk; the same
schedule through `Rollout.run` must give the same final latents.

Compared: final latents, every call's x0 and timestep, the per-call ends, branch, cut flag, query and key positions,
attended frames (and the call each was written by: its chunk's refill, the chunk's own frames the current call),
the buffer after every chunk (keys back to upstream's storage: slot 0 rotated at 0, the others pre-RoPE), its slot
frames and writers, and each chunk's scene, flush and cut.
"""

from __future__ import annotations

from typing import Iterator

import jax.numpy as jnp
import numpy as np

from rf_jax.memory import InfinityRoPEPolicy, Recache, policy_from_dict
from rf_jax.model.rope import apply_rope, rope_cos_sin
from rf_jax.reference.compare import Checks, Comparison
from rf_jax.reference.folder import ReferenceFolder
from rf_jax.reference.replay import folder_noise, replay_chunks
from rf_jax.sampling import PromptSchedule, Rollout

# Inputs, and arrays implied by compared ones (noisy inputs and flows by the x0 and the sampler).
USED = {"noise", "renoise", "context", "denoising_step_list_raw", "sched_sigmas", "sched_timesteps",
        "call_noisy_input", "call_flow_pred", "call_chunk"}


def folder_events(ref: ReferenceFolder) -> tuple[InfinityRoPEPolicy, list[dict]]:
  block = dict(ref.config["memory"])
  events = sorted(block.pop("scene_events", []), key=lambda e: int(e["chunk"]))
  policy = policy_from_dict(block, source=f"{ref.path}/config.json: memory")
  if not isinstance(policy, InfinityRoPEPolicy):
    raise ValueError(f"{ref.path}/config.json: memory is not Infinity-RoPE")
  return policy, events


def check_infinity_rope(ref: ReferenceFolder, z: dict, model, sampler, abs_tol: float) -> Iterator[Comparison]:
  policy, events = folder_events(ref)
  checks = Checks(z, abs_tol)
  f = sampler.chunk_frames
  steps = len(sampler.timesteps)
  noise = folder_noise(z, f, steps)
  b, frames, hl, wl, _ = noise.noise.shape
  chunks = frames // f
  contexts = np.asarray(z["context"])
  contexts = contexts if contexts.ndim == 4 else contexts[None]  # [scenes, B, P, D]
  flushes = {int(e["chunk"]) for e in events if e.get("flush", True)}
  if flushes and flushes != {int(e["chunk"]) for e in events}:
    raise ValueError(f"{ref.path}: scene events without a flush and events with one cannot share one rollout")
  schedule = PromptSchedule(tuple(int(e["chunk"]) * f for e in events), tuple(bool(e.get("rope_cut")) for e in events))
  scenes = [int(e.get("scene", k + 1)) for k, e in enumerate(events)]
  if scenes != list(range(1, len(events) + 1)):
    raise ValueError(f"{ref.path}: scene_events must switch to scenes 1, 2, ... in order; got {scenes}")
  recache = Recache.FLUSH if flushes else Recache.NONE
  rollout = Rollout(model, policy, sampler, batch=b, latent_hw=(hl, wl), frames=frames, record_calls=True,
                    recache=recache)
  texts = [rollout.text_kv(jnp.asarray(ctx)) for ctx in contexts]
  plan = schedule.chunk_prompts([j * f for j in range(chunks)])
  chunk_flush, chunk_cut = [], []

  def before(j, state):  # the scene events, then the scene's prompt
    scene, switch = plan[j]
    cut = switch and schedule.cuts[scene - 1]
    if switch:
      state = rollout.scene_event(state, flush=recache is Recache.FLUSH, cut=cut)
    chunk_flush.append(switch and recache is Recache.FLUSH)
    chunk_cut.append(cut)
    return state, texts[scene]

  outs, states = replay_chunks(rollout, z, noise, before)

  yield from _present(checks.max_abs("denoising_step_list", np.asarray(sampler.timesteps, np.float32)))
  latents = np.concatenate([o.latents for o in outs], axis=1)
  yield from _present(checks.latent("final_latents", latents))
  run_latents, _ = rollout.run(contexts if len(contexts) > 1 else contexts[0], noise=noise.noise, renoise=noise.renoise,
                               schedule=schedule)
  yield Comparison("rollout/final_latents (Rollout.run)", float(np.max(np.abs(run_latents - latents))), abs_tol,
                   "max_abs")
  yield from _present(checks.latent("call_x0_pred", np.concatenate([o.call_x0 for o in outs])))
  calls = {k: np.concatenate([o.calls[k] for o in outs]) for k in outs[0].calls}  # [chunks * (S + 1), ...]
  per_chunk = steps + 1
  q = hl // ref.model_config.patch_size[1] * (wl // ref.model_config.patch_size[2])
  t = np.tile(np.append(np.asarray(sampler.timesteps), sampler.context_noise), chunks)
  yield from _present(checks.max_abs("call_timestep", np.broadcast_to(t[:, None, None], (len(t), b, f))))
  yield from _present(checks.exact("call_current_start", np.repeat(np.arange(chunks) * f * q, per_chunk)))
  for name, key, scale in (("call_global_end_index", "global_end", q), ("call_local_end_index", "local_end", q),
                           ("call_local_end_before", "local_end_before", q), ("call_evict_branch", "evicted", 1),
                           ("call_scene_cut", "scene_cut", 1), ("call_q_rope_frames", "query_positions", 1),
                           ("call_k_rope_frames", "key_positions", 1), ("call_kv_frames", "key_frames", 1),
                           ("call_num_kv_frames", "local_end", 1)):
    yield from _present(checks.exact(name, calls[key] * scale))
  index = np.arange(len(calls["local_end"]))
  writer = np.where(calls["key_frames"] >= 0, (calls["key_frames"] // f) * per_chunk + steps, -1)
  own = (np.arange(policy.window_frames)[None] >= (calls["local_end"] - f)[:, None]) & (calls["key_frames"] >= 0)
  yield from _present(checks.exact("call_kv_written_by_call", np.where(own, index[:, None], writer)))
  yield from _present(checks.exact("call_sink_key_stored", calls["local_end"] - f > 0))
  yield from _present(checks.exact("call_scene", np.repeat([p for p, _ in plan], per_chunk)))
  yield from _present(checks.exact("chunk_scene", np.asarray([p for p, _ in plan])))
  yield from _present(checks.exact("chunk_flush", np.asarray(chunk_flush)))
  yield from _present(checks.exact("chunk_cut", np.asarray(chunk_cut)))
  slot_frames = np.stack([st.frame for st in states])  # [chunks, W]
  yield from _present(checks.exact("kv_after_chunk_slot_frame", slot_frames))
  yield from _present(checks.exact("kv_after_chunk_slot_written_by_call",
                                   np.where(slot_frames >= 0, (slot_frames // f) * per_chunk + steps, -1)))
  yield from _present(checks.exact("kv_after_chunk_local_end", np.stack([st.local_end for st in states]) * q))
  grid = (hl // ref.model_config.patch_size[1], wl // ref.model_config.patch_size[2])
  hd = ref.model_config.head_dim

  def upstream_keys(st):  # ours [L, B, N, W, Q, H] rotated at each slot's frame -> upstream's storage [L, W*Q, N, H]
    k = np.moveaxis(st.k[:, 0], 1, 3)  # [L, W, Q, N, H]
    cos, sin = rope_cos_sin(jnp.asarray(np.maximum(st.frame, 0)), grid, hd)  # [W, Q, H/2]
    back = np.array(apply_rope(jnp.asarray(k), cos, -sin))
    back[:, 0] = k[:, 0]  # upstream keeps the sink rotated at position 0 (= frame 0 here)
    return back.reshape(back.shape[0], -1, *back.shape[-2:])

  if "kv_after_chunk_k" in z:
    yield from _present(checks.max_abs("kv_after_chunk_k", np.stack([upstream_keys(st) for st in states])))
  if "kv_after_chunk_v" in z:
    ours = np.stack([np.moveaxis(st.v[:, 0], 1, 3).reshape(st.v.shape[0], -1, st.v.shape[2], st.v.shape[-1])
                     for st in states])
    yield from _present(checks.max_abs("kv_after_chunk_v", ours))


def _present(c):
  return [] if c is None else [Comparison("rollout/" + c.name, c.value, c.tolerance, c.metric)]
