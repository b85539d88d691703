"""The frame reservoir: sink slots never move, the ring keeps the newest frames, writes go where ring_slot says."""

import jax.numpy as jnp
import numpy as np

from rf_jax.memory.reservoir import Geometry, gather_slots, init_reservoir, ring_slot, write_frames
from rf_jax.model.attention import FrameKV

GEOM = Geometry(num_layers=2, batch=2, frame_tokens=3, num_heads=2, head_dim=4, chunk_frames=3, total_frames=99)


def frame_kv(frames, geom=GEOM):
  """Keys/values whose every entry encodes (layer, batch, frame): easy to trace where they went."""
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
    res = write_frames(res, frame_kv(range(c, c + chunk)), c, sink)
  return res


def test_sink_survives_and_the_ring_keeps_the_newest_frames():
  res = fill(capacity=10, sink=2, frames=99)
  held = sorted(int(x) for x in np.asarray(res.frame[0]))
  assert held == [0, 1] + list(range(91, 99))
  assert np.asarray(res.frame[0, :2]).tolist() == [0, 1]  # the sink never moves
  k = np.asarray(res.k)
  for slot, fr in enumerate(np.asarray(res.frame[1])):  # every slot holds its frame's keys, per layer and sample
    assert np.all(k[1, 1, slot] == 1000 + 100 + fr)
    assert np.all(np.asarray(res.v)[0, 1, slot] == -(100 + fr))


def test_ring_slot_formula_and_an_empty_ring():
  assert np.asarray(ring_slot(jnp.arange(8), 2, 5)).tolist() == [0, 1, 2, 3, 4, 2, 3, 4]
  assert np.asarray(ring_slot(jnp.arange(4), 2, 2)).tolist() == [0, 1, 2, 2]  # 2 = ring_end: no slot


def test_a_chunk_longer_than_the_ring_keeps_its_newest_frames():
  res = fill(capacity=3, sink=1, frames=9)  # ring of 2 slots, chunks of 3
  assert sorted(np.asarray(res.frame[0]).tolist()) == [0, 7, 8]


def test_key_means_are_layer0_means_over_tokens_then_heads():
  rng = np.random.default_rng(0)
  k = rng.normal(size=(2, 2, 3, 3, 2, 4)).astype(np.float32)
  res = write_frames(init_reservoir(GEOM, 6), FrameKV(jnp.asarray(k), jnp.asarray(k)), 0, 2)
  np.testing.assert_allclose(np.asarray(res.key_mean[:, :3]), k[0].mean(axis=(2, 3)), atol=1e-6)


def test_gather_slots_per_sample():
  res = fill(capacity=6, sink=2, frames=6)
  slots = jnp.asarray([[0, 5], [3, 3]])
  k, _ = gather_slots(res, slots)
  assert np.asarray(k)[1, 0, :, 0, 0, 0].tolist() == [1000 + 0, 1000 + 5]
  assert np.asarray(k)[0, 1, :, 0, 0, 0].tolist() == [100 + 3, 100 + 3]
