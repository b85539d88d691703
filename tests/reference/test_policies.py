"""Infinity-RoPE (fixtures IR, IR_cut) and Deep Forcing (DF): the fixtures with every array compared, folders of
other sizes from the independent NumPy rollouts (tests/numpy_policies.py), and wrong rules that must fail."""

import dataclasses

import pytest

from conftest import fixture_dir
from rf_jax.reference import ReferenceFolder, check_reference

ARGS = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=8, in_dim=4, dim=32, ffn_dim=64, freq_dim=16, text_dim=8,
            out_dim=4, num_heads=2, num_layers=2, qk_norm=True, cross_attn_norm=True, eps=1e-6)


def _check(path):
  results, notes = check_reference(path, emit=lambda _: None)
  return results, notes, [c.line() for c in results if not c.passed]


@pytest.mark.parametrize("name,count", [("IR", 22), ("IR_cut", 26), ("DF", 37)])
def test_fixture_passes_with_every_array_compared(name, count):
  results, notes, failed = _check(fixture_dir(name))
  assert not failed, failed
  assert notes == [] and len(results) == count


def test_independent_infinity_rope_with_flush_and_cut(tmp_path):
  """W = 8 (not a multiple of the chunk: misaligned queries in the first evicting chunk), a 2-frame sink (the flush
  overwrites sink slot 1, as upstream's literal slots do), a flush at chunk 4 and a flush + cut at chunk 7."""
  from numpy_policies import write_policy_folder
  path = write_policy_folder(str(tmp_path / "ir"), ARGS, {"policy": "infinity_rope", "window_frames": 8,
                                                          "sink_frames": 2}, latent_hw=(4, 4), chunks=9, chunk=3,
                             raw_steps=(1000, 500), events={4: (1, False), 7: (2, True)})
  results, notes, failed = _check(path)
  assert not failed, failed
  names = {c.name for c in results}
  assert notes == [] and {"rollout/call_q_rope_frames", "rollout/kv_after_chunk_k", "rollout/chunk_cut"} <= names


def test_independent_infinity_rope_spelled_as_a_window(tmp_path):
  """The IR fixture's spelling (window + window_relative) means Infinity-RoPE at any window: W = 7, chunk 2."""
  from numpy_policies import write_policy_folder
  path = write_policy_folder(str(tmp_path / "irw"), ARGS, {"policy": "window", "window_frames": 7, "sink_frames": 1,
                                                           "positions": "window_relative"},
                             latent_hw=(4, 4), chunks=7, chunk=2, raw_steps=(1000, 750, 500))
  results, notes, failed = _check(path)
  assert not failed, failed
  assert notes == []


def test_independent_deep_forcing_of_another_size(tmp_path):
  """W 9, sink 2 (not a multiple of the chunk), capacity 7, recent 3, reuse limit 2: compression from chunk 3 on,
  every chunk after it, with tokens excluded by reuse."""
  from numpy_policies import write_policy_folder
  memory = {"policy": "deep_forcing", "window_frames": 9, "sink_frames": 2, "capacity_frames": 7, "recent_frames": 3,
            "topc_max_reuse": 2}
  path = write_policy_folder(str(tmp_path / "df"), ARGS, memory, latent_hw=(4, 4), chunks=7, chunk=3,
                             raw_steps=(1000, 500))
  results, notes, failed = _check(path)
  assert not failed, failed
  names = {c.name for c in results}
  assert notes == [] and {"rollout/pc_selected_idx", "rollout/kv_after_chunk_topc_counts"} <= names


def _with_memory(name, **change):
  ref = ReferenceFolder.open(fixture_dir(name))
  return dataclasses.replace(ref, config={**ref.config, "memory": {**ref.config["memory"], **change}})


def test_wrong_rules_fail():
  """A cut block put elsewhere, and a reuse limit that excludes no token, must each move the video."""
  from rf_jax.reference.rollout import check_rollout
  for ref in (_with_memory("IR_cut", rope_cut_frame=30), _with_memory("DF", topc_max_reuse=-1)):
    z = ref.npz("rollout.npz")
    failed = {c.name for c in check_rollout(ref, z, ref.load_model(), 1e-5) if not c.passed}
    assert "rollout/final_latents" in failed, ref.path
