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
    assert r["rel_err_vs_oracle"] <= 2e-2  # bfloat16


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
  # 1.3B, one device: 30 layers x 60 slots (sink 2 + the 58 frames c-58 .. c-1 a chunk can still read, of
  # upstream's 117) x 1560 tokens x 1536 wide, keys and values, bf16.
  one = rows[("wan2.1-t2v-1.3b", "1 device")]
  assert one["reservoir_slots"] == 2 + 58 and one["frame_tokens"] == 1560
  assert abs(one["reservoir_gib"] - 30 * 60 * 1560 * 1536 * 2 * 2 / gib) < 0.01
  assert abs(one["params_gib"] - 1_418_996_800 * 2 / gib) < 0.01  # `rf-jax inspect --preset` count, bf16
  # Heads over tensor=4 quarter the reservoir; 14B over tensor=8 (40 heads = 8 x 5).
  assert abs(rows[("wan2.1-t2v-1.3b", "tensor=4")]["reservoir_gib"] - one["reservoir_gib"] / 4) < 0.01
  big = rows[("wan2.1-t2v-14b", "tensor=8")]
  assert abs(big["reservoir_gib"] - 40 * 60 * 1560 * 5120 * 2 * 2 / 8 / gib) < 0.01


def test_demo_diagnostics_on_a_tiny_model(tmp_path):
  """scripts/demo_diagnostics.py on an untrained tiny-config model: every test reported, the baselines computed from
  the dataset independently, and the rollout strip written."""
  import numpy as np
  from rf_jax.registry import flatten
  from rf_jax.checkpoint import save_checkpoint
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


def test_memory_study_on_a_tiny_random_demo(tmp_path):
  """The study runs end to end on a small random model written as a demo folder: one line per policy and the
  dataset, the plot and a strip per policy."""
  from flax import nnx
  from rf_jax import demo
  from rf_jax.config import ModelConfig
  from rf_jax.model import CausalWanDiT
  cfg = ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=3, out_dim=3, freq_dim=16, text_dim=8,
                    text_len=2, patch_size=(1, 4, 4), prediction="x0")
  folder = str(tmp_path / "demo")
  demo.write_demo(folder, cfg, nnx.to_pure_dict(nnx.state(CausalWanDiT(cfg, rngs=nnx.Rngs(0)), nnx.Param)),
                  {"sampler": {"steps": [1000, 500], "shift": 3.0, "eta": 0.0}, "frame_hw": [16, 16],
                   "default_frames": 12, "fps": 4})
  out = tmp_path / "study"
  rows = run_script("scripts/memory_study.py", "--demo", folder, "--frames", "24", "--samples", "1",
                    "--out", str(out))
  assert rows[0]["policy"] == "dataset" and len(rows) == 9  # the dataset and 8 memories
  for r in rows:
    assert {"device", "jax", "commit", "motion_first5s", "consistency_last5s", "foreground_last5s"} <= r.keys()
  for r in rows[1:]:
    assert r["compile_count"] == 1 and r["steady_ms_per_chunk"] > 0
  assert rows[0]["consistency_first5s"] > 0.8  # the dataset keeps its shapes
  assert (out / "study.png").exists() and len(list(out.glob("strip_*.png"))) == 9
