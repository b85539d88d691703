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
