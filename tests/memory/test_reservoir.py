"""The frame reservoir: sink slots never move, the ring keeps the newest frames, writes go where ring_slot says,
keys are stored head-major and rotated at their frame index."""

import jax.numpy as jnp
import numpy as np

from rf_jax.memory.reservoir import Geometry, gather_slots, init_reservoir, ring_slot, stored_kv, write_frames
from rf_jax.model.attention import FrameKV
from rf_jax.model.rope import rope_cos_sin
from rf_jax.ops.rope import apply_rope

GEOM = Geometry(num_layers=2, batch=2, frame_tokens=3, num_heads=2, head_dim=4, chunk_frames=3, total_frames=99)


GRID = (1, 3)  # the frame's tokens as a 1 x 3 grid


def frame_kv(frames, geom=GEOM):
  """Keys/values whose every entry encodes (layer, batch, frame): easy to trace where they went (the values as they
  are; the keys are rotated on the way in, see `test_keys_are_stored_rotated_at_their_frame_head_major`)."""
  f = np.asarray(frames)
  layer = np.arange(geom.num_layers)[:, None, None]
  batch = np.arange(geom.batch)[None, :, None]
  code = (1000 * layer + 100 * batch + f[None, None, :]).astype(np.float32)  # [L, B, F]
  k = np.broadcast_to(code[..., None, None, None], (geom.num_layers, geom.batch, len(f), geom.frame_tokens,
                                                    geom.num_heads, geom.head_dim))
  return FrameKV(jnp.asarray(k), jnp.asarray(-k))


def fill(capacity, sink, frames, chunk=3):
  res = init_reservoir(GEOM, capacity)
  for c in range(0, frames, chunk):
    res = write_frames(res, frame_kv(range(c, c + chunk)), c, sink, GRID)
  return res


def test_sink_survives_and_the_ring_keeps_the_newest_frames():
  res = fill(capacity=10, sink=2, frames=99)
  held = sorted(int(x) for x in np.asarray(res.frame[0]))
  assert held == [0, 1] + list(range(91, 99))
  assert np.asarray(res.frame[0, :2]).tolist() == [0, 1]  # the sink never moves
  v = np.asarray(res.v)  # [L, B, N, R, Q, H]
  for slot, fr in enumerate(np.asarray(res.frame[1])):  # every slot holds its frame's values, per layer and sample
    assert np.all(v[1, 1, :, slot] == -(1000 + 100 + fr))
    assert np.all(v[0, 1, :, slot] == -(100 + fr))


def test_ring_slot_formula_and_an_empty_ring():
  assert np.asarray(ring_slot(jnp.arange(8), 2, 5)).tolist() == [0, 1, 2, 3, 4, 2, 3, 4]
  assert np.asarray(ring_slot(jnp.arange(4), 2, 2)).tolist() == [0, 1, 2, 2]  # 2 = ring_end: no slot


def test_a_chunk_longer_than_the_ring_keeps_its_newest_frames():
  res = fill(capacity=3, sink=1, frames=9)  # ring of 2 slots, chunks of 3
  assert sorted(np.asarray(res.frame[0]).tolist()) == [0, 7, 8]


def test_key_means_are_layer0_means_over_tokens_then_heads():
  rng = np.random.default_rng(0)
  k = rng.normal(size=(2, 2, 3, 3, 2, 4)).astype(np.float32)
  res = write_frames(init_reservoir(GEOM, 6), FrameKV(jnp.asarray(k), jnp.asarray(k)), 0, 2, GRID)
  np.testing.assert_allclose(np.asarray(res.key_mean[:, :3]), k[0].mean(axis=(2, 3)), atol=1e-6)  # pre-RoPE


def test_keys_are_stored_rotated_at_their_frame_head_major():
  rng = np.random.default_rng(1)
  k = rng.normal(size=(2, 2, 3, 3, 2, 4)).astype(np.float32)  # [L, B, F, Q, N, H] pre-RoPE, frames 6..8
  res = write_frames(init_reservoir(GEOM, 6), FrameKV(jnp.asarray(k), jnp.asarray(2 * k)), 6, 2, GRID)
  cos, sin = rope_cos_sin(jnp.arange(6, 9), GRID, 4)  # [F, Q, H/2], an independent rotation of the same keys
  rotated = np.moveaxis(np.asarray(apply_rope(jnp.asarray(k), cos, sin)), -2, 2)  # [L, B, N, F, Q, H]
  slots = [int(ring_slot(jnp.int32(f), 2, 6)) for f in (6, 7, 8)]
  np.testing.assert_allclose(np.asarray(res.k)[:, :, :, slots], rotated, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(res.v)[:, :, :, slots], np.moveaxis(2 * k, -2, 2))
  np.testing.assert_array_equal(np.asarray(stored_kv(FrameKV(jnp.asarray(k), jnp.asarray(k)), jnp.arange(6, 9),
                                                     GRID).k), np.asarray(res.k)[:, :, :, slots])


def test_gather_slots_per_sample():
  res = fill(capacity=6, sink=2, frames=6)
  slots = jnp.asarray([[0, 5], [3, 3]])
  _, v = gather_slots(res, slots)  # [L, B, N, M, Q, H]
  assert np.asarray(v)[1, 0, 0, :, 0, 0].tolist() == [-(1000 + 0), -(1000 + 5)]
  assert np.asarray(v)[0, 1, 1, :, 0, 0].tolist() == [-(100 + 3), -(100 + 3)]
