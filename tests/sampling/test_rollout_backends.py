"""Rollouts with every attention backend reproduce the reference backend's latents (Pallas in interpret mode)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rf_jax.config import get_preset
from rf_jax.memory import RelaxPolicy, SlowFastPolicy, WindowPolicy
from rf_jax.model import CausalWanDiT
from rf_jax.sampling import Rollout, Sampler

CFG = dataclasses.replace(get_preset("tiny"), dim=128, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=16,
                          text_dim=8, text_len=4)  # head dim 64
HW = (4, 6)  # 6 tokens per frame: key blocks overhang every frame
POLICIES = {
    "window": WindowPolicy(window_frames=9, sink_frames=1),
    "relax": RelaxPolicy(reservoir_frames=12, num_candidates=2),
    "slow_fast": SlowFastPolicy(sink_frames=1, slow_frames=2, fast_frames=3, rope_length=9),
}


def rollout(impl, policy, frames=15):
  model = CausalWanDiT(CFG, attn_impl=impl, rngs=nnx.Rngs(0))
  r = Rollout(model, policy, Sampler.from_steps((1000, 500)), batch=2, latent_hw=HW, frames=frames)
  ctx = jax.random.normal(jax.random.key(1), (2, CFG.text_len, CFG.text_dim))
  latents, _ = r.run(ctx, key=jax.random.key(2))
  return np.asarray(latents)


@pytest.mark.parametrize("policy", list(POLICIES))
@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu"])
def test_rollout_latents_match_reference_backend(impl, policy):
  ref = rollout("reference", POLICIES[policy])
  got = rollout(impl, POLICIES[policy])
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_training_forward_with_kernels_matches_reference():
  x = jax.random.normal(jax.random.key(3), (1, 6, *HW, CFG.in_dim))
  t = jnp.full((1, 6), 500.0)
  ctx = jax.random.normal(jax.random.key(4), (1, CFG.text_len, CFG.text_dim))
  ref = CausalWanDiT(CFG, attn_impl="reference", rngs=nnx.Rngs(0)).forward_train(x, t, ctx, chunk_frames=3)
  for impl in ("pallas_gpu", "pallas_tpu"):
    got = CausalWanDiT(CFG, attn_impl=impl, rngs=nnx.Rngs(0)).forward_train(x, t, ctx, chunk_frames=3)
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * float(jnp.abs(ref).max()))
