"""Rollout parity with the PyTorch fixtures: Self-Forcing windows (A, C), Relax Forcing (RX, RX_abs), Context
Forcing's upstream slow-fast memory (CFX). Floats within 1e-5 (max |difference|), decisions exactly."""

import jax
import pytest

from conftest import fixture_dir
from rf_jax.reference.folder import ReferenceFolder

# What each folder must have had compared (besides final latents, per-call x0 and the step list).
from rf_jax.reference import check_reference
EXPECTED = {
    "A": {"kv_after_chunk2_k", "kv_after_chunk2_v"},
    "C": {"kv_after_chunk4_k", "kv_after_chunk4_v"},
    "RX": {"chunk_selected_hist_frame", "chunk_candidate_frames", "chunk_candidate_scores",
           "chunk_candidate_protos", "chunk_sink_proto", "chunk_tail_proto", "call_kv_global_frames",
           "call_kv_rope_frames", "call_relaxed", "kv0_after_chunk_k", "final_latents_force_oldest",
           "final_latents_force_newest", "final_latents_force_worst", "final_latents_force_second"},
    "RX_abs": {"chunk_selected_hist_frame", "chunk_candidate_scores", "call_kv_rope_frames"},
    "CFX": {"call_sim", "chunk_promotion_call", "chunk_promoted_frame", "call_token_source_frame",
            "call_num_slow_frames", "chunk_slow_frames", "kv_after_chunk_k", "kv_after_chunk_v",
            "call_q_rope_start", "call_num_kv_frames"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rollout_matches_reference(name):
  results, notes = check_reference(fixture_dir(name), abs_tolerance=1e-5, emit=lambda _: None)
  compared = {r.name.split("/", 1)[1] for r in results if r.name.startswith("rollout/")}
  assert {"final_latents", "call_x0_pred", "denoising_step_list"} | EXPECTED[name] <= compared
  bad = [r.line() for r in results if not r.passed]
  assert not bad, bad
  assert not [n for n in notes if n.startswith("rollout.npz")], notes
  for r in results:  # decisions are exact, floats at float32 reproduction level
    if r.metric == "mismatch":
      assert r.value == 0.0
    elif r.metric == "max_abs":
      assert r.value < 1e-5, r.line()


def test_rollout_detects_a_wrong_selection():
  """The check is not vacuous: a Relax run that always takes the oldest candidate fails on RX."""
  import dataclasses
  from rf_jax.reference.rollout import ForcedRelax, _check_rollout, folder_policy
  ref = ReferenceFolder.open(fixture_dir("RX"))
  z = ref.npz("rollout.npz")
  policy = folder_policy(ref)
  oldest = z["chunk_selected_hist_frame_force_oldest"]
  forced = ForcedRelax(**{f.name: getattr(policy, f.name) for f in dataclasses.fields(type(policy))},
                       forced=tuple(int(x) for x in oldest))
  with jax.default_matmul_precision("highest"):
    results = {r.name: r for r in _check_rollout(ref, z, ref.load_model(), forced, 1e-5)}
  assert not results["rollout/chunk_selected_hist_frame"].passed
  assert results["rollout/final_latents"].value > 1e-3


def test_without_a_memory_block_constructor_args_give_a_window(tmp_path):
  import json
  import os
  from rf_jax.memory import WindowPolicy
  from rf_jax.reference.rollout import folder_policy
  src = fixture_dir("C")
  config = json.load(open(os.path.join(src, "config.json")))
  del config["memory"]
  json.dump(config, open(tmp_path / "config.json", "w"))
  assert folder_policy(ReferenceFolder.open(tmp_path)) == WindowPolicy(window_frames=6, sink_frames=2)
