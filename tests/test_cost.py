"""Cost accounting (`rf_jax.cost`): the HLO walk against hand-counted programs, and the compiled chunk step of each
memory policy against its analytic minimum at tiny shapes (the audit `scripts/cost_audit.py` runs at real ones)."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from rf_jax.config import get_preset
from rf_jax.cost import (analytic_chunk_flops, attended_frames, hlo_costs, memory_entries, memory_loop_steps,
                         ratio)
from rf_jax.memory import RelaxPolicy, SlowFastPolicy, WindowPolicy
from rf_jax.model import CausalWanDiT
from rf_jax.sampling import Rollout, Sampler


def test_loops_are_counted_by_their_trip_counts():
  """A scan of 5 around a loop whose count is data (said to run 3 times), plus one matmul outside: XLA's module
  figure counts each body once; the walk multiplies."""
  def f(x, w, n):
    def body(c, _):
      return jax.lax.fori_loop(0, n, lambda i, c: jnp.tanh(c @ w), c), None
    c, _ = jax.lax.scan(body, x, None, length=5)
    return c @ w.T
  sds = jax.ShapeDtypeStruct
  compiled = jax.jit(f).lower(sds((64, 128), jnp.float32), sds((128, 128), jnp.float32),
                              sds((), jnp.int32)).compile()
  one = 2 * 64 * 128 * 128
  got = hlo_costs(compiled.as_text(), dynamic_trips=3)
  assert got.dot_flops == one * (5 * 3 + 1)
  assert got.unknown_loops == 1 and sorted(t for _, t in got.loops) == [3, 5]
  xla = compiled.cost_analysis()
  xla = xla[0] if isinstance(xla, list) else xla
  assert xla["flops"] < 3 * one  # what the walk is for: XLA counts each loop body once
  assert got.bytes_accessed >= (5 * 3 + 1) * 128 * 128 * 4  # the weights are read at every step at least


@pytest.mark.parametrize("policy", [WindowPolicy(window_frames=21), RelaxPolicy(), SlowFastPolicy()],
                         ids=["window21", "relax", "slow_fast"])
def test_the_chunk_step_does_the_minimum_work(policy):
  """Counted matmul FLOPs of the compiled step within 5 % of the least a steady chunk needs: the attended keys
  only (no empty or invalid slot), the prompt's kept keys, the refill's keys only. 16x16 latents: 64 tokens per
  frame, so the memory loop reads 2 frames a step and every policy's count is a whole number of steps."""
  cfg = get_preset("tiny")
  model = nnx.eval_shape(lambda: CausalWanDiT(cfg, attn_impl="reference", rngs=nnx.Rngs(0)))
  sampler = Sampler.from_steps()
  frames, q, rows = 60, 64, 8
  rollout = Rollout(model, policy, sampler, batch=1, latent_hw=(16, 16), frames=frames, text_rows=rows)
  memory = attended_frames(policy, 3, frames)
  trips = memory_loop_steps(memory, q, memory_entries(policy, 3, frames))
  assert trips * 2 == memory
  counted = hlo_costs(rollout.lower().compile().as_text(), dynamic_trips=trips)
  minimum = analytic_chunk_flops(cfg, batch=1, frames=3, frame_tokens=q, steps=4, memory_frames=memory,
                                 prompt_keys=rows + 1)
  assert 0.99 <= ratio(counted.dot_flops, minimum["total"]) <= 1.05, (counted.dot_flops, minimum)
  assert counted.unknown_loops >= 1  # the memory loops (denoising calls and refill), counted at `trips`
