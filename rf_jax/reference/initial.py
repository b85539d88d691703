"""The image-to-video and video-extension parity check: Self-Forcing's `initial_latent` path (fixture `I2V`).

A folder lists its rollouts in config.json (`rollouts.<name>`: file, num_initial_frames, memory); each file holds
the initial latents, the noise of the generated frames and every upstream output. The initial frames go into the
memory first (`Rollout.prefill`: the first frame alone when their count is 1 + 3k, then blocks of a chunk, each one
call at t = 0), the generated chunks continue their positions, and the output starts with the initial frames.

Compared: the final latents (initial frames included) and where each output frame came from; every initial-frame
call's x0 and flow, its start token and timestep, and the memory after it (frames held, keys and values); every
generation call's x0, timestep and start token; the memory after each chunk. Upstream's cache holds the chunk's
own frames besides what the next chunk reads; the memory here holds what the next chunk reads, so caches are
compared on the frames both hold, and the frames held must be exactly the ones upstream's next chunk attends.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax.memory import WindowPolicy, policy_from_dict
from rf_jax.reference.compare import Checks, Comparison, channels_last, max_abs_error
from rf_jax.reference.folder import ReferenceFolder
from rf_jax.reference.rollout import folder_sampler
from rf_jax.sampling import Rollout

# Arrays that are inputs, restate another array, or are upstream's own cache bookkeeping (token indices), implied
# by the compared slot tables.
USED = {"noise", "renoise", "context", "initial_latent", "denoising_step_list_raw", "sched_sigmas", "sched_timesteps",
        "call_noisy_input", "call_flow_pred", "call_chunk", "call_global_end_index", "call_local_end_index",
        "call_rolled", "kv_after_chunk_local_end"}
INIT_USED = {"input", "global_end_index", "local_end_index"}



def upstream_view(table: np.ndarray, sink: int, held: int) -> set[int]:
  """The frames upstream's next chunk attends from a slot table: the sink slots (the first `sink`, whatever frames
  they hold), then the newest `held - sink` of the others."""
  sinks = [int(x) for x in table[:sink] if x >= 0]
  rest = sorted(int(x) for x in table[sink:] if x >= 0)
  return set(sinks) | set(rest[len(rest) - max(held - sink, 0):] if held > sink else [])


def memory_errors(res, table: np.ndarray, k: np.ndarray, v: np.ndarray, q: int, sink: int
                  ) -> tuple[float, float, float]:
  """Our reservoir against upstream's cache k/v [L, B, tokens, N, H] with its slot table: (slot mismatch: 0 when
  the frames held are exactly those upstream's next chunk attends, max |dk|, max |dv| over the frames both hold)."""
  ours = {int(fr): i for i, fr in enumerate(res.frame[0]) if fr >= 0}
  slots = 0.0 if set(ours) == upstream_view(table, sink, res.frame.shape[1]) else 1.0
  common = [(slot, ours[int(fr)]) for slot, fr in enumerate(table) if fr >= 0 and int(fr) in ours]
  l, b, tokens, n, h = k.shape
  ref_k = k.reshape(l, b, tokens // q, q, n, h)[:, :, [s for s, _ in common]]
  ref_v = v.reshape(l, b, tokens // q, q, n, h)[:, :, [s for s, _ in common]]
  mk = np.stack([np.moveaxis(res.k[:, :, :, i], 2, 3) for _, i in common], axis=2)  # [L, B, n, Q, N, H]
  mv = np.stack([np.moveaxis(res.v[:, :, :, i], 2, 3) for _, i in common], axis=2)
  return slots, max_abs_error(mk, ref_k), max_abs_error(mv, ref_v)


def _memory(errors: list[tuple[float, float, float]], names: tuple[str, str, str], tol: float):
  """The worst of each error over several memories, as comparisons named `names` (slot table, k, v)."""
  worst = np.max(np.asarray(errors), axis=0)
  yield Comparison(names[0], float(worst[0]), 0.0, "mismatch")
  yield Comparison(names[1], float(worst[1]), tol, "max_abs")
  yield Comparison(names[2], float(worst[2]), tol, "max_abs")


def check_initial(ref: ReferenceFolder, model, abs_tol: float) -> tuple[list[Comparison], list[str]]:
  """Every rollout of config.json's `rollouts` (those with initial frames). Returns (comparisons, notes)."""
  results, notes = [], []
  sampler = folder_sampler(ref)
  f, q = sampler.chunk_frames, int(ref.config["frame_seq_length"])
  for name, spec in sorted(ref.config["rollouts"].items()):
    z = ref.npz(spec["file"])
    if z is None:
      raise ValueError(f"{ref.path}: config.json lists {spec['file']}, which is missing")
    policy = policy_from_dict(spec["memory"], source=f"{ref.path}/config.json: rollouts.{name}.memory")
    if not isinstance(policy, WindowPolicy):
      raise ValueError(f"{ref.path}: rollouts.{name}: the initial-frame check replays a window memory only")
    got = [c for c in _check_one(ref, z, model, policy, sampler, int(spec["num_initial_frames"]), f, q, abs_tol)
           if c is not None]
    results += [dataclasses.replace(c, name=f"{spec['file'][:-4]}/{c.name}") for c in got]
    compared = {c.name for c in got}
    left = sorted(k for k in z if k not in compared and k not in USED
                  and not (k.startswith("init") and k.split("_", 1)[1] in INIT_USED))
    if left:
      notes.append(f"{spec['file']}: not compared: {', '.join(left)}")
  return results, notes


def _check_one(ref, z, model, policy: WindowPolicy, sampler, n0: int, f: int, q: int, tol: float):
  noise = channels_last(z["noise"])
  b, frames, hl, wl, c = noise.shape
  chunks, steps = frames // f, len(sampler.timesteps)
  renoise = channels_last(z["renoise"]).reshape(chunks, steps - 1, b, f, hl, wl, c)
  initial = channels_last(z["initial_latent"])
  rollout = Rollout(model, policy, sampler, batch=b, latent_hw=(hl, wl), frames=frames, record_calls=True,
                    initial_frames=n0)
  text = rollout.text_kv(jnp.asarray(z["context"]))
  state = rollout.init_state()
  check = Checks(z, tol)
  exact, max_abs, latent = check.exact, check.max_abs, check.latent
  for i, (first, count) in enumerate(rollout.initial):
    state, (x0, flow), _ = rollout.prefill_call(state, text, initial, i)
    snap = jax.tree.map(np.array, state)
    p = f"init{i}_"
    yield latent(p + "x0_pred", np.asarray(x0))
    yield latent(p + "flow_pred", np.asarray(flow))
    yield exact(p + "current_start", np.asarray(first * q))
    yield max_abs(p + "timestep", np.zeros((b, 1)))
    err = memory_errors(snap, z[p + "slot_frame"], z[p + "kv_k"], z[p + "kv_v"], q, policy.sink_frames)
    yield from _memory([err], (p + "slot_frame", p + "kv_k", p + "kv_v"), tol)
  outs, states = [], []
  for j in range(chunks):
    state, out = rollout.step(state, text, j, jnp.asarray(noise[:, j * f:(j + 1) * f]), jnp.asarray(renoise[j]))
    outs.append(jax.tree.map(np.asarray, out))
    states.append(jax.tree.map(np.array, state))
  latents = np.concatenate([initial] + [o.latents for o in outs], axis=1)
  yield latent("final_latents", latents)
  yield exact("output_frame_source", np.asarray([0] * n0 + [1] * frames))
  call_x0 = np.concatenate([o.call_x0[:steps + 1] for o in outs])  # [calls, B, F, ...]
  yield latent("call_x0_pred", call_x0)
  per_call_t = np.concatenate([np.asarray(sampler.timesteps, np.float32), [sampler.context_noise]])
  if "call_timestep" in z:
    yield max_abs("call_timestep", np.broadcast_to(np.tile(per_call_t, chunks)[:, None, None], z["call_timestep"].shape))
  starts = np.repeat([int(o.trace["chunk_positions"][0]) * q for o in outs], steps + 1)
  yield exact("call_current_start", starts)
  yield max_abs("denoising_step_list", np.asarray(sampler.timesteps))
  errors = [memory_errors(res, z["kv_after_chunk_slot_frame"][j], z["kv_after_chunk_k"][j],
                          z["kv_after_chunk_v"][j], q, policy.sink_frames) for j, res in enumerate(states)]
  yield from _memory(errors, ("kv_after_chunk_slot_frame", "kv_after_chunk_k", "kv_after_chunk_v"), tol)
