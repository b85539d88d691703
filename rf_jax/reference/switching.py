"""The prompt-switching parity check: LongLive's interactive generation with KV re-cache (fixture `LL`).

config.json's `interactive` block names the switch frames and which file ran with `global_sink` true or false;
`rollout.npz` holds the inputs both files share. The replay runs chunk by chunk: at a switch the memory is re-cached
(`Rollout.recache_call`), then the chunk runs with the new prompt.

Compared: the final latents, every generation call's x0, timestep, start token and prompt; each chunk's prompt and
where each switch took effect; the memory after each chunk (frames held, keys, values, the prompt each held frame's
keys were computed with); each re-cache's input, frames, timestep, x0 and flow, its start, count and first stored
frame, the slots it wrote or left unchanged, the memory after it; each prompt's cross-attention keys and values.
As in `rf_jax.reference.initial`, caches are compared on the frames both hold, and the frames held must be the ones
upstream's next chunk attends.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rf_jax.memory import WindowPolicy, policy_from_dict
from rf_jax.reference.compare import Checks, Comparison, channels_last
from rf_jax.reference.folder import ReferenceFolder
from rf_jax.reference.initial import memory_errors, upstream_view
from rf_jax.reference.rollout import folder_sampler
from rf_jax.sampling import PromptSchedule, Rollout

SHARED = ("noise", "renoise", "prompt_embeds", "switch_frame_indices", "denoising_step_list",
          "denoising_step_list_raw", "sched_sigmas", "sched_timesteps", "crossattn_k_prompt", "crossattn_v_prompt")
# Inputs, arrays implied by compared ones, and upstream's own cache bookkeeping: token indices, its flags, and its
# cross-attention cache after a re-cache (rf_jax keeps no cross-attention cache: a prompt's keys and values are
# computed once per prompt and compared as crossattn_*_prompt).
USED = {"noise", "renoise", "prompt_embeds", "switch_frame_indices", "denoising_step_list_raw", "sched_sigmas",
        "sched_timesteps", "call_noisy_input", "call_flow_pred", "call_chunk", "call_global_end_index",
        "call_local_end_index", "call_is_recompute", "call_rolled", "kv_after_chunk_local_end",
        "recache_sink_recache_after_switch"}
RECACHE_USED = {"global_end_index", "local_end_index", "crossattn_is_init_after", "crossattn_k_after"}



def full_text_kv(model, context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Every layer's cross-attention keys/values of all text_len rows (no merged padding): [L, B, P, N, H] each."""
  y = model.embed_text(jnp.asarray(context))
  graphdef, state = nnx.split(model.blocks)
  _, (k, v) = jax.lax.scan(lambda _, st: (None, nnx.merge(graphdef, st).cross_attn.text_kv(y)), None, state)
  return np.asarray(k), np.asarray(v)


def check_switching(ref: ReferenceFolder, model, abs_tol: float) -> tuple[list[Comparison], list[str]]:
  block = ref.config["interactive"]
  shared = ref.npz("rollout.npz")
  if shared is None:
    raise ValueError(f"{ref.path}: config.json has an `interactive` block but no rollout.npz")
  results, notes = [], []
  files = [("rollout.npz", bool(block.get("global_sink_rollout_npz", True)))]
  if ref.has("rollout_nogs.npz"):
    files.append(("rollout_nogs.npz", bool(block.get("global_sink_rollout_nogs_npz", False))))
  for name, global_sink in files:
    z = {**{k: shared[k] for k in SHARED if k in shared}, **ref.npz(name)}
    got = [c for c in _check_one(ref, z, model, global_sink, abs_tol) if c is not None]
    results += [dataclasses.replace(c, name=f"{name[:-4]}/{c.name}") for c in got]
    compared = {c.name for c in got}
    left = sorted(k for k in ref.npz(name) if k not in compared and k not in USED
                  and not (k.startswith("recache") and k[7:8].isdigit() and k.split("_", 1)[1] in RECACHE_USED))
    if left:
      notes.append(f"{name}: not compared: {', '.join(left)}")
  return results, notes


def _check_one(ref, z, model, global_sink: bool, tol: float):
  policy = policy_from_dict(ref.config["memory"], source=f"{ref.path}/config.json: memory")
  if not isinstance(policy, WindowPolicy):
    raise ValueError(f"{ref.path}: the switching check replays a window memory only")
  sampler = folder_sampler(ref)
  f, q, s = sampler.chunk_frames, int(ref.config["frame_seq_length"]), policy.sink_frames
  steps = len(sampler.timesteps)
  noise = channels_last(z["noise"])
  b, frames, hl, wl, c = noise.shape
  chunks = frames // f
  renoise = channels_last(z["renoise"]).reshape(chunks, steps - 1, b, f, hl, wl, c)
  prompts = np.asarray(z["prompt_embeds"])  # [K, B, P, D]
  schedule = PromptSchedule(tuple(int(x) for x in z["switch_frame_indices"]))
  rollout = Rollout(model, policy, sampler, batch=b, latent_hw=(hl, wl), frames=frames, record_calls=True,
                    global_sink=global_sink)
  texts = [rollout.text_kv(jnp.asarray(p)) for p in prompts]
  check = Checks(z, tol)
  exact, max_abs, latent = check.exact, check.max_abs, check.latent
  plan = schedule.chunk_prompts([j * f for j in range(chunks)])
  yield exact("chunk_prompt", np.asarray([p for p, _ in plan]))
  switch_chunks = [j for j, (_, sw) in enumerate(plan) if sw]
  yield exact("switch_chunk", np.asarray(switch_chunks))
  yield exact("switch_effective_frame", np.asarray([j * f for j in switch_chunks]))
  if "crossattn_k_prompt" in z:
    kv = [full_text_kv(model, p) for p in prompts]
    yield max_abs("crossattn_k_prompt", np.stack([k for k, _ in kv]))
    yield max_abs("crossattn_v_prompt", np.stack([v for _, v in kv]))
  if "denoising_step_list" in z:
    yield max_abs("denoising_step_list", np.asarray(sampler.timesteps))

  state = rollout.init_state()
  width = rollout.recache_width
  recent = np.zeros((b, width, hl, wl, c), np.float32)
  prompt_of: dict[int, int] = {}  # frame -> the prompt its stored keys were computed with
  outs, mem_errors, slot_prompt_ok = [], [], []
  recache_rows: dict[str, list] = {k: [] for k in ("num_frames", "start_frame", "is_recompute", "first_stored_frame",
                                                   "write_start_slot", "write_end_slot")}
  for j in range(chunks):
    prompt, switch = plan[j]
    if switch and j > 0:
      i = switch_chunks.index(j)
      p = f"recache{i}_"
      before = jax.tree.map(np.array, state)
      state, (x0, flow), info = rollout.recache_call(state, texts[prompt], recent, j * f)
      info = jax.tree.map(np.asarray, info)
      after = jax.tree.map(np.array, state)
      rerun, keys = info["rerun"], info["keys"]
      run_frames = info["frames"][rerun]
      yield latent(p + "input", recent[:, rerun])
      yield exact(p + "frames", run_frames)
      yield max_abs(p + "timestep", np.full((b, len(run_frames)), sampler.context_noise, np.float32))
      yield latent(p + "x0_pred", np.asarray(x0)[:, rerun])
      yield latent(p + "flow_pred", np.asarray(flow)[:, rerun])
      stored = {int(x) for x in info["frames"][keys]}
      for x in stored:
        prompt_of[x] = prompt
      table = z[p + "slot_frame"]
      err = memory_errors(after, table, z[p + "kv_k"], z[p + "kv_v"], q, s)
      yield Comparison(p + "slot_frame", err[0], 0.0, "mismatch")
      yield Comparison(p + "kv_k", err[1], tol, "max_abs")
      yield Comparison(p + "kv_v", err[2], tol, "max_abs")
      yield _slot_prompts(p + "slot_prompt", after, table, z[p + "slot_prompt"], prompt_of)
      written = np.asarray([int(x) in stored for x in table])
      yield exact(p + "slot_written", written)
      kept = {int(x) for x, ok in zip(before.frame[0], np.asarray(after.frame[0] == before.frame[0])) if ok and x >= 0}
      was_empty = z["kv_after_chunk_slot_frame"][j - 1] < 0
      yield exact(p + "slot_unchanged", ~written & (np.asarray([int(x) in kept for x in table]) | was_empty))
      slots = np.flatnonzero(written)
      recache_rows["num_frames"].append(len(run_frames))
      recache_rows["start_frame"].append(int(run_frames[0]))
      recache_rows["is_recompute"].append(bool(run_frames[0] > 0))
      recache_rows["first_stored_frame"].append(min(stored))
      recache_rows["write_start_slot"].append(int(slots.min()))
      recache_rows["write_end_slot"].append(int(slots.max()) + 1)
      yield max_abs(p + "crossattn_k_during", full_text_kv(model, prompts[prompt])[0])
      yield max_abs(p + "crossattn_v_during", full_text_kv(model, prompts[prompt])[1])
    state, out = rollout.step(state, texts[prompt], j, jnp.asarray(noise[:, j * f:(j + 1) * f]),
                              jnp.asarray(renoise[j]))
    out = jax.tree.map(np.asarray, out)
    outs.append(out)
    for x in range(j * f, j * f + f):
      prompt_of[x] = prompt
    recent = np.concatenate([recent[:, f:], out.latents], axis=1)
    res = jax.tree.map(np.array, state)
    table = z["kv_after_chunk_slot_frame"][j]
    mem_errors.append(memory_errors(res, table, z["kv_after_chunk_k"][j], z["kv_after_chunk_v"][j], q, s))
    slot_prompt_ok.append(_slot_prompts("", res, table, z["kv_after_chunk_slot_prompt"][j], prompt_of).value)
  for key, rows in recache_rows.items():
    yield exact(f"recache_{key}", np.asarray(rows))
  worst = np.max(np.asarray(mem_errors), axis=0)
  yield Comparison("kv_after_chunk_slot_frame", float(worst[0]), 0.0, "mismatch")
  yield Comparison("kv_after_chunk_k", float(worst[1]), tol, "max_abs")
  yield Comparison("kv_after_chunk_v", float(worst[2]), tol, "max_abs")
  yield Comparison("kv_after_chunk_slot_prompt", max(slot_prompt_ok), 0.0, "mismatch")
  latents = np.concatenate([o.latents for o in outs], axis=1)
  yield latent("final_latents", latents)
  yield latent("call_x0_pred", np.concatenate([o.call_x0 for o in outs]))
  per_call_t = np.concatenate([np.asarray(sampler.timesteps, np.float32), [sampler.context_noise]])
  if "call_timestep" in z:
    yield max_abs("call_timestep", np.broadcast_to(np.tile(per_call_t, chunks)[:, None, None], z["call_timestep"].shape))
  yield exact("call_current_start", np.repeat([int(o.trace["chunk_positions"][0]) * q for o in outs], steps + 1))
  yield exact("call_prompt", np.repeat([p for p, _ in plan], steps + 1))


def _slot_prompts(name: str, res, table: np.ndarray, want: np.ndarray, prompt_of: dict[int, int]) -> Comparison:
  """The prompt of the keys of every frame our memory holds, against upstream's slot table of prompts."""
  ours = {int(x) for x in res.frame[0] if x >= 0}
  rows = [(prompt_of.get(int(fr), -2), int(p)) for fr, p in zip(table, want) if fr >= 0 and int(fr) in ours]
  bad = sum(a != b for a, b in rows)
  return Comparison(name, bad / max(len(rows), 1), 0.0, "mismatch")
