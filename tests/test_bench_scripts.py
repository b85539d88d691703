"""The benchmark scripts run on CPU at small sizes and print well-formed JSON lines (their numbers are not
checked here: speed goals live in the benchmarks, not in tests)."""

import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def run_script(*args):
  out = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0, out.stderr[-3000:]
  return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_bench_attention_small():
  rows = run_script("scripts/bench_attention.py", "--small", "--iters", "2", "--check", "--cases", "relax7",
                    "warmup", "--backends", "reference", "cudnn", "pallas_gpu", "pallas_tpu")
  assert {(r["case"], r["backend"]) for r in rows} == {(c, b) for c in ("relax7", "warmup")
                                                      for b in ("reference", "cudnn", "pallas_gpu", "pallas_tpu")}
  for r in rows:
    assert {"device", "jax", "commit"} <= r.keys()
    if r["backend"] == "cudnn":
      assert "skipped" in r  # no cuDNN on a CPU
      continue
    assert "error" not in r, r
    assert r["compile_seconds"] > 0 and r["steady_median_ms"] > 0 and r["bytes_moved"] > 0
    assert r["rel_err_vs_reference"] <= 2e-2  # bfloat16


def test_bench_rollout_small():
  rows = run_script("scripts/bench_rollout.py", "--preset", "tiny", "--latent-hw", "4", "4", "--frames", "12",
                    "--policies", "relax", "--attention", "pallas_gpu")
  (row,) = rows
  assert row["attention"] == "pallas_gpu" and row["compile_count"] == 1 and row["chunks"] == 4
  assert row["video_fps"] == 4 * row["latent_fps"] or abs(row["video_fps"] - 4 * row["latent_fps"]) < 0.05
  assert 0 < row["mfu"] and row["steady_chunk_tflop"] > 0


def test_memory_plan_against_the_shapes_by_hand():
  rows = {(r["preset"], r["mesh"]): r for r in run_script("scripts/memory_plan.py")}
  gib = 2.0 ** 30
  # 1.3B, one device: 30 layers x 117 slots x 1560 tokens x 1536 wide, keys and values, bf16.
  one = rows[("wan2.1-t2v-1.3b", "1 device")]
  assert one["reservoir_slots"] == 117 and one["frame_tokens"] == 1560
  assert abs(one["reservoir_gib"] - 30 * 117 * 1560 * 1536 * 2 * 2 / gib) < 0.01
  assert abs(one["params_gib"] - 1_418_996_800 * 2 / gib) < 0.01  # `rf-jax inspect --preset` count, bf16
  # Heads over tensor=4 quarter the reservoir; 14B over tensor=8 (40 heads = 8 x 5).
  assert abs(rows[("wan2.1-t2v-1.3b", "tensor=4")]["reservoir_gib"] - one["reservoir_gib"] / 4) < 0.01
  big = rows[("wan2.1-t2v-14b", "tensor=8")]
  assert abs(big["reservoir_gib"] - 40 * 117 * 1560 * 5120 * 2 * 2 / 8 / gib) < 0.01


def test_demo_diagnostics_on_a_tiny_model(tmp_path):
  """scripts/demo_diagnostics.py on an untrained tiny-config model: every test reported, the baselines computed from
  the dataset independently, and the rollout strip written."""
  import numpy as np
  from rf_jax.checkpoint import flatten, save_checkpoint
  from rf_jax.data.shapes import shapes_batch
  from rf_jax.train import load_train_config
  from rf_jax.train.step import initial_params
  config = os.path.join(ROOT, "configs", "train", "tiny.py")
  cfg = load_train_config(config)
  save_checkpoint(str(tmp_path / "model"), cfg.model,
                  {p: np.asarray(v) for p, v in flatten(initial_params(cfg)).items()})
  rows = run_script("scripts/demo_diagnostics.py", str(tmp_path / "model"), "--config", config, "--out",
                    str(tmp_path / "diag"), "--samples", "2", "--chunks", "3", "--ode-steps", "2",
                    "--sampler-steps", "2")
  tests = [r["test"] for r in rows]
  assert tests == ["one_step"] * 6 + ["sdedit"] * 4 + ["rollout"] * 2
  real = shapes_batch(cfg.data, seed=cfg.data_seed + 1000, indices=range(2), frames=cfg.clip_frames)
  ctx = cfg.clip_frames - cfg.chunk_frames
  copy_last = np.abs(real[:, ctx - 1:ctx] - real[:, ctx:]).mean()
  assert all(abs(r["copy_last_frame_error"] - copy_last) < 1e-4 for r in rows if r["test"] != "rollout")
  assert all(len(r["foreground_per_chunk"]) == 2 for r in rows if r["test"] == "rollout")
  assert open(tmp_path / "diag" / "rollout.png", "rb").read(4) == b"\x89PNG"
