"""Prompt switching with re-cache (LongLive, fixture LL) and initial frames (Self-Forcing's image-to-video and video
extension, fixture I2V): the fixtures, folders of other sizes from the independent NumPy implementation, and a
wrong rule that must fail."""

import dataclasses

import pytest

from conftest import fixture_dir
from rf_jax.reference import ReferenceFolder, check_reference

ARGS = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=8, in_dim=4, dim=32, ffn_dim=64, freq_dim=16, text_dim=8,
            out_dim=4, num_heads=2, num_layers=2, qk_norm=True, cross_attn_norm=True, eps=1e-6)


def _check(path):
  results, notes = check_reference(path, emit=lambda _: None)
  failed = [c.line() for c in results if not c.passed]
  return results, notes, failed


@pytest.mark.parametrize("name,count", [("LL", 94), ("I2V", 32)])
def test_fixture_passes_with_every_array_compared(name, count):
  results, notes, failed = _check(fixture_dir(name))
  assert not failed, failed
  assert notes == [] and len(results) == count


def test_switching_detects_the_wrong_global_sink():
  from rf_jax.reference.switching import check_switching
  ref = ReferenceFolder.open(fixture_dir("LL"))
  block = ref.config["interactive"]
  swapped = dataclasses.replace(ref, config={**ref.config, "interactive": {
      **block, "global_sink_rollout_npz": False, "global_sink_rollout_nogs_npz": True}})
  results, _ = check_switching(swapped, ref.load_model(), 1e-5)
  failed = {c.name for c in results if not c.passed}
  assert "rollout/final_latents" in failed and "rollout_nogs/final_latents" in failed


def test_initial_frames_detect_a_wrong_sink():
  from rf_jax.reference.initial import check_initial
  ref = ReferenceFolder.open(fixture_dir("I2V"))
  rollouts = {k: {**v, "memory": {**v["memory"], "sink_frames": 0}} for k, v in ref.config["rollouts"].items()}
  results, _ = check_initial(dataclasses.replace(ref, config={**ref.config, "rollouts": rollouts}), ref.load_model(),
                             1e-5)
  assert "rollout_i2v/final_latents" in {c.name for c in results if not c.passed}


def test_independent_switching_folder_of_another_size(tmp_path):
  from numpy_reference import write_conditioned_folder
  path = write_conditioned_folder(str(tmp_path / "ll"), ARGS, latent_hw=(4, 4), chunks=6, chunk=2, window=6, sink=1,
                                  raw_steps=(1000, 500), prompts=3, switches=(3, 8))  # 3: rounded up to frame 4
  results, notes, failed = _check(path)
  assert not failed, failed
  assert notes == [] and {"rollout/recache1_kv_k", "rollout_nogs/recache1_slot_frame"} <= {c.name for c in results}


def test_independent_initial_frames_folder_of_another_size(tmp_path):
  from numpy_reference import write_conditioned_folder
  path = write_conditioned_folder(str(tmp_path / "i2v"), ARGS, latent_hw=(4, 4), chunks=3, chunk=3, window=9, sink=2,
                                  raw_steps=(1000, 500), initial_frames=4)  # 1 + 3: the first frame alone, then 3
  results, notes, failed = _check(path)
  assert not failed, failed
  assert notes == [] and "rollout_cond/init1_kv_k" in {c.name for c in results}
