"""Parity of the DiT's block-causal forward with the PyTorch fixtures (A: global, C: 6-frame window)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import fixture_dir
from rf_jax.reference.folder import ReferenceFolder


from rf_jax.reference.dit import check_forward
from rf_jax.reference.compare import relative_error
@pytest.fixture(scope="module", params=["A", "C"])
def reference(request):
  ref = ReferenceFolder.open(fixture_dir(request.param))
  return ref, ref.load_model(), dict(np.load(f"{ref.path}/forward_train.npz"))


def test_forward_and_every_activation_match_the_fixture(reference):
  ref, model, z = reference
  with jax.default_matmul_precision("highest"):
    results = list(check_forward(ref, z, model, 1e-5))
  names = {r.name for r in results}
  expected = {"forward/out", "forward/x0_pred", "forward/attn_mask"} | {f"forward/{k}" for k in z if
                                                                         k.startswith("act_")}
  assert names == expected
  bad = [r.line() for r in results if not r.passed]
  assert not bad, bad


def test_forward_is_jittable_and_matches_eager(reference):
  ref, model, z = reference
  x = jnp.asarray(z["x"]).transpose(0, 2, 3, 4, 1)
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, x, t, ctx):
    return nnx.merge(graphdef, state).forward_train(x, t, ctx, chunk_frames=3,
                                                    local_window_frames=ref.config["constructor_args"][
                                                        "local_attn_size"])

  out = np.asarray(run(state, x, jnp.asarray(z["t"]), jnp.asarray(z["context"]))).transpose(0, 4, 1, 2, 3)
  assert relative_error(out, z["out"]) < 1e-5


@pytest.mark.parametrize("stored_at", [0, 10])
def test_memory_view_equals_block_causal_forward(reference, stored_at):
  """Chunk 1 attending to chunk 0's keys through a MemoryView equals the block-causal forward's chunk 1: the keys
  stored as a reservoir stores them (rotated at frames 0..2, or at 10..12 and turned back by a shift of -10)."""
  from rf_jax.model import MemoryView, block_causal_mask
  from rf_jax.memory.reservoir import stored_kv
  ref, model, z = reference
  x = jnp.asarray(z["x"]).transpose(0, 2, 3, 4, 1)[:, :6]
  t = jnp.asarray(z["t"])[:, :6]
  text = model.text_kv(jnp.asarray(z["context"]))
  b, f, hl, wl, _ = x.shape
  grid = (hl // 2, wl // 2)
  full, kv = model(x, t, text, frame_pos=jnp.arange(6), self_mask=block_causal_mask(6, grid[0] * grid[1], 3))
  # Chunk 0 alone, then chunk 1 with chunk 0's keys in 4 memory slots (one left empty, full of garbage).
  stored = stored_kv(type(kv)(kv.k[:, :, :3], kv.v[:, :, :3]), stored_at + jnp.arange(3), grid)  # [L, B, N, 3, Q, H]
  pad = lambda a: jnp.concatenate([jnp.zeros_like(a[:, :, :, :1]) + 7.0, a], axis=3)  # noqa: E731  garbage slot
  shift = None if stored_at == 0 else jnp.full((b, 4), -stored_at, jnp.int32)
  memory = MemoryView(pad(stored.k), pad(stored.v), shift, jnp.tile(jnp.array([[False, True, True, True]]), (b, 1)),
                      jnp.tile(jnp.array([[0, 1, 2, 3]]), (b, 1)))
  chunk1, _ = model(x[:, 3:], t[:, 3:], text, frame_pos=jnp.arange(3, 6), self_mask=None, memory=memory)
  np.testing.assert_allclose(np.asarray(chunk1), np.asarray(full[:, 3:]), rtol=1e-5, atol=1e-5)


def test_x0_prediction_returns_the_flow_its_clean_sample_implies():
  """prediction="x0": the same weights' head output is read as x0, and the model returns (x_t - x0) / max(t/1000,
  0.05), the flow that x0 implies (so samplers written for flow models run it unchanged)."""
  import dataclasses
  from rf_jax.config import ModelConfig
  from rf_jax.model import CausalWanDiT
  cfg = ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=3, out_dim=3, freq_dim=16, text_dim=8,
                    text_len=2, patch_size=(1, 4, 4))
  flow_model = CausalWanDiT(cfg, rngs=nnx.Rngs(0))
  x0_model = CausalWanDiT(dataclasses.replace(cfg, prediction="x0"), rngs=nnx.Rngs(0))
  x = jax.random.normal(jax.random.key(1), (2, 6, 8, 8, 3))
  t = jnp.array([[900.0, 900, 900, 500, 500, 500], [20.0, 20, 20, 0, 0, 0]])
  ctx = jnp.zeros((2, 2, 8))
  head = np.asarray(flow_model.forward_train(x, t, ctx))  # the head's raw output (identical weights)
  sigma = np.maximum(np.asarray(t) / 1000, 0.05)[:, :, None, None, None]
  want = (np.asarray(x) - head) / sigma
  np.testing.assert_allclose(np.asarray(x0_model.forward_train(x, t, ctx)), want, rtol=1e-5, atol=1e-5)
