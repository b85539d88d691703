"""scripts/gpu_check.sh, the offline GPU check, in its CPU dry run (so it never rots between GPU sessions), and its
stage mechanics: a stage that fails or runs out of time is recorded and the run goes on."""

import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_gpu_check():
  spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "scripts", "gpu_check.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_dry_run_runs_every_stage_and_writes_the_summary(tmp_path):
  run = subprocess.run(["bash", "scripts/gpu_check.sh", "--dry-run", "--out", str(tmp_path), "--budget", "500"],
                       cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, RF_JAX_GPU_PYTHON=sys.executable))
  assert run.returncode == 0, run.stderr[-3000:]
  stages = [json.loads(line) for line in open(tmp_path / "stages.jsonl")]
  assert [s["stage"] for s in stages] == ["env", "tests", "attention", "rollout_reference"], stages
  assert all(s["status"] == "ok" for s in stages), stages
  rows = [json.loads(line) for line in open(tmp_path / "results.jsonl")]
  env = next(r for r in rows if r["stage"] == "env")
  assert env["jax"] and env["backend"] == "cpu"
  attention = {(r["case"], r["backend"]): r for r in rows if r["stage"] == "attention"}
  for case in ("dense21", "relax7", "warmup"):
    assert "skipped" in attention[(case, "cudnn")]  # no GPU here
    for backend in ("reference", "pallas_gpu", "pallas_gpu_rope_before"):
      assert attention[(case, backend)]["rel_err_vs_oracle"] <= 2e-2  # bfloat16 against the float32 oracle
  rollout = [r for r in rows if r["stage"] == "rollout_reference"]
  assert sorted(r["policy"] for r in rollout) == ["relax", "self_forcing_window21"]
  assert all(r["compile_count"] == 1 and r["video_fps"] > 0 for r in rollout)
  summary = (tmp_path / "summary.md").read_text()
  assert "| rollout_reference | ok |" in summary and "relax attention" in summary and "auto" in summary
  assert "4 skipped" in (tmp_path / "pytest.txt").read_text()  # the compiled-kernel tests need a GPU


def test_a_failing_or_slow_stage_is_recorded_and_the_run_goes_on(tmp_path):
  gc = load_gpu_check()
  with open(tmp_path / "log.txt", "w") as log:
    run = gc.Run(str(tmp_path), budget=60, log=log)
    slow, _ = run.stage("slow", [sys.executable, "-c", "import time; time.sleep(30)"], budget=11)
    bad, _ = run.stage("bad", [sys.executable, "-c", "raise SystemExit('no GPU plugin')"], budget=30)
    good, out = run.stage("good", [sys.executable, "-c", "print('{\"x\": 1}')"], budget=30)
    run.deadline = 0  # the whole run's budget spent
    late, _ = run.stage("late", [sys.executable, "-c", "print(1)"], budget=30)
  assert slow["status"] == "timeout" and 10 <= slow["seconds"] < 20
  assert bad["status"] == "failed" and "no GPU plugin" in bad["reason"]
  assert good["status"] == "ok" and gc.json_lines(out, "good", str(tmp_path)) == [{"stage": "good", "x": 1}]
  assert late["status"] == "skipped" and "no time left" in late["reason"]
  assert [json.loads(line)["stage"] for line in open(tmp_path / "stages.jsonl")] == ["slow", "bad", "good", "late"]
