"""The rollout: equivalence with the block-causal forward, one compilation for every chunk, keys vs explicit noise,
scan for sweeps, and a long run past the reference's 1,024-frame RoPE table with flat memory."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rf_jax.config import get_preset
from rf_jax.memory import DeepForcingPolicy, RelaxPolicy, SlowFastPolicy, SlowFastUpstreamPolicy, WindowPolicy
from rf_jax.model import CausalWanDiT
from rf_jax.sampling import ResumePoint, Rollout, Sampler

SMALL = dataclasses.replace(get_preset("tiny"), dim=32, ffn_dim=64, num_heads=2, freq_dim=16, text_dim=8, text_len=4)
HW = (4, 4)


@pytest.fixture(scope="module")
def model():
  return CausalWanDiT(SMALL, rngs=nnx.Rngs(0))


def context(batch=1, seed=1):
  return jax.random.normal(jax.random.key(seed), (batch, SMALL.text_len, SMALL.text_dim))


def test_a_window_holding_the_whole_video_equals_the_block_causal_forward(model):
  """Chunk j's first call sees the earlier chunks' clean refill keys: the same as a block-causal forward over
  [x0 of chunks < j at t = 0, chunk j's noise at t_0]."""
  sampler = Sampler.from_steps()
  frames = 9
  r = Rollout(model, WindowPolicy(window_frames=-1), sampler, batch=2, latent_hw=HW, frames=frames,
              record_calls=True)
  ctx = context(2)
  key = jax.random.key(3)
  forward = jax.jit(lambda x, t: model.forward_train(x, t, ctx, chunk_frames=3))  # one compile per length
  with jax.default_matmul_precision("highest"):
    latents, outs = r.run(ctx, key=key)
    for j in range(3):
      noise, _ = r.noise(key, j)
      x = jnp.concatenate([jnp.asarray(latents[:, :3 * j]), noise], axis=1)
      t = jnp.concatenate([jnp.zeros((2, 3 * j)), jnp.full((2, 3), sampler.timesteps[0])], axis=1)
      flow = forward(x, t)
      x0 = np.asarray(noise - flow[:, 3 * j:])  # sigma(1000) = 1
      np.testing.assert_allclose(outs[j].call_x0[0], x0, atol=2e-5)


def test_one_compilation_serves_every_chunk_and_every_lambda(model):
  r = Rollout(model, RelaxPolicy(reservoir_frames=12), Sampler.from_steps(), batch=1, latent_hw=HW, frames=30)
  r.run(context(), key=jax.random.key(0))
  assert r.compile_count == 1
  text = r.text_kv(context())
  state = r.init_state()
  x, eps = r.noise(jax.random.key(1), 4)
  for lam in (0.0, 1.0, 7.5):  # a traced scalar: no recompilation
    state, _ = r.step(state, text, 4, x, eps, params={"lam": jnp.float32(lam)})
  assert r.compile_count == 1


def test_key_and_explicit_noise_agree_and_the_scan_rollout_matches(model):
  policy = SlowFastPolicy(sink_frames=3, slow_frames=2, fast_frames=6, rope_length=11, threshold=0.9)
  r = Rollout(model, policy, Sampler.from_steps(), batch=1, latent_hw=HW, frames=18)
  key = jax.random.key(5)
  a, _ = r.run(context(), key=key)
  noise = np.concatenate([np.asarray(r.noise(key, j)[0]) for j in range(6)], axis=1)
  renoise = np.stack([np.asarray(r.noise(key, j)[1]) for j in range(6)])
  b, _ = r.run(context(), noise=noise, renoise=renoise)
  np.testing.assert_array_equal(a, b)
  c, _ = jax.jit(r.run_scan)(context(), key)
  np.testing.assert_allclose(np.asarray(c), a, atol=1e-5)


def test_a_sweep_over_lambda_vmaps_one_compiled_rollout(model):
  r = Rollout(model, RelaxPolicy(reservoir_frames=12), Sampler.from_steps(), batch=1, latent_hw=HW, frames=24)
  lams = jnp.asarray([0.0, 2.0, 10.0])
  sweep = jax.jit(jax.vmap(lambda lam: r.run_scan(context(), jax.random.key(2), {"lam": lam})))
  latents, traces = sweep(lams)
  assert latents.shape == (3, 1, 24, *HW, SMALL.in_dim)
  single, _ = r.run(context(), key=jax.random.key(2), params={"lam": jnp.float32(10.0)})
  np.testing.assert_allclose(np.asarray(latents[2]), single, atol=2e-5)
  assert traces["history"].shape == (3, 8, 1, 1)


def test_a_long_rollout_passes_frame_1024_with_flat_memory(model):
  frames = 1035
  for policy in (WindowPolicy(window_frames=6, sink_frames=1), RelaxPolicy(reservoir_frames=15)):
    r = Rollout(model, policy, Sampler.from_steps(), batch=1, latent_hw=HW, frames=frames)
    text = r.text_kv(context())
    state = r.init_state()
    key = jax.random.key(0)
    live = {}
    for j in range(r.num_chunks):
      state, out = r.step(state, text, j, *r.noise(key, j))
      if j in (20, r.num_chunks - 1):
        jax.block_until_ready(out.latents)
        del out
        live[j] = sum(a.nbytes for a in jax.live_arrays())
        continue
    assert r.compile_count == 1
    assert live[20] == live[r.num_chunks - 1], live
    _, last = r.step(state, text, r.num_chunks - 1, *r.noise(key, 0))  # any chunk index works on the same state
    assert np.isfinite(np.asarray(last.latents)).all()
    if isinstance(policy, WindowPolicy):  # the sink keeps position 0: the call spans more than 1,024 positions
      assert int(np.asarray(last.trace["chunk_positions"])[-1]) == frames - 1
      assert 0 in np.asarray(last.trace["memory_positions"])[0].tolist()


@pytest.mark.parametrize("window,sink", [(9, 0), (6, 3)])
def test_position_schemes_that_differ_by_one_shift_give_the_same_video(model, window, sink):
  """Where the schemes place every attended frame at the same offsets (no sink; or a window that is only sink and
  chunk), the positions differ by one constant, so rebased RoPE must give the same latents to rounding, however
  large the absolute positions."""
  outs = []
  for positions in ("absolute", "relocated_sink", "end_aligned"):
    if positions == "absolute" and sink:
      continue
    r = Rollout(model, WindowPolicy(window_frames=window, sink_frames=sink, positions=positions),
                Sampler.from_steps(), batch=1, latent_hw=HW, frames=21)
    outs.append(r.run(context(), key=jax.random.key(4))[0])
  for other in outs[1:]:
    np.testing.assert_allclose(other, outs[0], atol=1e-5)


def test_bad_geometry_is_refused(model):
  with pytest.raises(ValueError, match="multiple"):
    Rollout(model, WindowPolicy(), Sampler.from_steps(), batch=1, latent_hw=HW, frames=10)
  with pytest.raises(ValueError, match="RoPE frame positions"):  # keys are stored rotated at their frame index
    Rollout(model, WindowPolicy(window_frames=6, sink_frames=1), Sampler.from_steps(), batch=1, latent_hw=HW,
            frames=3 * 2**29)
  r = Rollout(model, WindowPolicy(), Sampler.from_steps(), batch=1, latent_hw=HW, frames=6)
  with pytest.raises(ValueError, match="noise has shape"):
    r.run(context(), noise=np.zeros((1, 3, *HW, 16)), renoise=np.zeros((2, 3, 1, 3, *HW, 16)))


def test_eta_zero_is_the_euler_step_of_the_flow_ode(model):
  """Sampler(eta=0): the first chunk equals Euler integration of the flow, x <- x + (sigma_next - sigma) * flow,
  computed here with the model called directly (the first chunk has no memory)."""
  sampler = Sampler.from_steps([1000, 750, 500, 250], shift=3.0, eta=0.0)
  r = Rollout(model, WindowPolicy(window_frames=-1), sampler, batch=1, latent_hw=HW, frames=3)
  ctx = context(1)
  key = jax.random.key(7)
  x, _ = r.noise(key, 0)
  with jax.default_matmul_precision("highest"):
    latents, _ = r.run(ctx, key=key)
    text = model.text_kv(ctx)
    sig = np.asarray(sampler.schedule.sigma(jnp.asarray(sampler.timesteps)))
    for k, t in enumerate(sampler.timesteps):
      flow, _ = model(x, jnp.full((1, 3), t), text, frame_pos=jnp.arange(3, dtype=jnp.int32), self_mask=None)
      x0 = x - sig[k] * flow
      x = x + (sig[k + 1] - sig[k]) * flow if k + 1 < len(sig) else x0
  np.testing.assert_allclose(latents[:, :3], np.asarray(x0), rtol=0, atol=2e-5)
  fresh, _ = Rollout(model, WindowPolicy(window_frames=-1), Sampler.from_steps([1000, 750, 500, 250], shift=3.0),
                     batch=1, latent_hw=HW, frames=3).run(ctx, key=key)
  assert np.abs(fresh - latents).max() > 1e-3  # eta = 1 (fresh noise) is another sampler


@pytest.mark.parametrize("policy", [WindowPolicy(window_frames=9, sink_frames=2, positions="relocated_sink"),
                                    RelaxPolicy(reservoir_frames=12), SlowFastPolicy(slow_frames=2, rope_length=12),
                                    SlowFastUpstreamPolicy(slow_frames=2, rope_length=12)],
                         ids=["window", "relax", "slow_fast", "slow_fast_upstream"])
def test_the_keys_only_refill_stores_what_the_whole_refill_would(model, policy):
  """Unrecorded, the refill computes keys only (no head, the last layer stops at its key/value projections);
  recorded, the whole call runs. The same latents (to float rounding: two programs) and the same decisions."""
  got = []
  for record in (False, True):
    r = Rollout(model, policy, Sampler.from_steps(), batch=2, latent_hw=HW, frames=18, record_calls=record)
    latents, outs = r.run(context(2), key=jax.random.key(4))
    got.append((latents, [jax.tree.map(np.asarray, (o.trace, o.calls)) for o in outs]))
  np.testing.assert_allclose(got[0][0], got[1][0], rtol=1e-5, atol=1e-5)

  def same(a, b):
    if np.issubdtype(a.dtype, np.floating):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    else:
      np.testing.assert_array_equal(a, b)  # frames, positions, promotions, choices
  jax.tree.map(same, got[0][1], got[1][1])


def test_the_chunk_step_donates_the_memory_and_updates_it_in_place(model):
  """The state handed to `step` is donated: its buffers are reused for the next state (none is left behind, no
  'donated buffers were not usable' warning)."""
  import warnings
  r = Rollout(model, RelaxPolicy(reservoir_frames=12), Sampler.from_steps(), batch=1, latent_hw=HW, frames=9)
  text = r.text_kv(context())
  state = r.init_state()
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    for j in range(3):
      new, _ = r.step(state, text, j, *r.noise(jax.random.key(0), j))
      assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state))
      state = new
  aliases = r.lower().compile().as_text().split("\n", 1)[0]
  assert "input_output_alias" in aliases  # the compiled step writes the new state over the old


def test_prompt_padding_rows_are_merged_and_cut(model):
  """Zero rows past the prompt (Wan's padding) are one key with a log(count) bias: a context cut after its last
  used row, padded to text_len, or given whole gives the same video; a row cut that holds text is refused."""
  ctx = np.array(context(2))
  ctx[:, 2:] = 0  # two rows used of text_len = 4
  outs = []
  # (context, text_rows, prompt keys, merged): the rows kept (by default what is given, up to a multiple of 32),
  # and one key for the padding rows past them, if any
  for c, rows, keys, merged in ((ctx, None, 4, False), (ctx[:, :2], None, 3, True), (ctx, 3, 4, True),
                                (ctx, 4, 4, False), (ctx[:, :2], 4, 4, False)):
    r = Rollout(model, WindowPolicy(window_frames=6), Sampler.from_steps(), batch=2, latent_hw=HW, frames=6,
                text_rows=rows)
    text = r.text_kv(c)
    assert text.k.shape[2] == keys and (text.bias is not None) == merged
    outs.append(r.run(c, key=jax.random.key(5))[0])
  for other in outs[1:]:
    np.testing.assert_allclose(other, outs[0], rtol=1e-5, atol=1e-5)
  r = Rollout(model, WindowPolicy(window_frames=6), Sampler.from_steps(), batch=2, latent_hw=HW, frames=6,
              text_rows=1)
  with pytest.raises(ValueError, match="non-zero rows past text_rows=1"):
    r.text_kv(ctx)


@pytest.mark.parametrize("policy", [  # float, int and bool leaves; per-layer and per-sample token tables
    RelaxPolicy(reservoir_frames=12), DeepForcingPolicy(window_frames=9, sink_frames=2, capacity_frames=7,
                                                        recent_frames=3, topc_max_reuse=2)],
    ids=lambda p: p.name)
def test_a_run_resumed_from_a_checkpoint_gives_the_same_latents(model, policy):
  """The state `on_checkpoint` hands over (on the host) continues the run bit for bit, for every kind of state."""
  r = Rollout(model, policy, Sampler.from_steps(), batch=1, latent_hw=HW, frames=15)
  key = jax.random.key(7)
  saved = {}
  whole, _ = r.run(context(), key=key, on_checkpoint=lambda j, st: saved.setdefault(j, st), checkpoint_every=3)
  assert sorted(saved) == [3]
  pieces = []
  r.run(context(), key=key, resume=ResumePoint(3, saved[3]), on_chunk=lambda j, out: pieces.append((j, out.latents)))
  assert [j for j, _ in pieces] == [3, 4]
  np.testing.assert_array_equal(np.concatenate([p for _, p in pieces], axis=1), whole[:, 9:])
