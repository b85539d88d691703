"""Everything GPU-side in one offline run with a hard time budget: versions and device, the GPU-marked tests, every
attention backend at the real 1.3B shapes against the dense oracle, and the 1.3B rollout (window 21 and relax)
with each backend that passed. Run through scripts/gpu_check.sh (which sets up the Python path and carried wheels).

Every stage runs in its own process under a deadline (its own budget, and what is left of the whole run's); one
that fails or runs out records why and the run goes on. Writes into one folder (--out, else $OUT, else
gpu_check_out/): results.jsonl (every benchmark line, tagged with its stage), stages.jsonl (per stage: status,
seconds, the reason it failed), pytest.txt, log.txt (each stage's stderr tail) and summary.md (the tables for the
README: device and versions, attention per case and backend with relax's speed-up over the dense window, rollout
frames per second and MFU, the goals, and which backend `auto` should pick).

--dry-run runs the same stages on CPU at tiny sizes (Pallas kernels in interpret mode), so the script is tested in
CI without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ROLLOUT_BACKENDS = ("cudnn", "pallas_gpu", "reference")  # in the order they run (if the budget runs out, the XLA
#                                                          fallback is the one left out)
GOAL_ATTENTION_SPEEDUP = 2.8  # relax7 over dense21, at the 1.3B shapes
GOAL_VIDEO_FPS = 40.0  # the whole 1.3B relax rollout
PASS_ERROR = {"bfloat16": 5e-2, "float32": 1e-4}  # max |error| / max |oracle| for a backend to count as passing


class Run:
  def __init__(self, out: str, budget: float, log):
    self.out, self.deadline, self.log = out, time.monotonic() + budget, log
    self.stages: list[dict] = []

  def left(self) -> float:
    return self.deadline - time.monotonic()

  def stage(self, name: str, cmd: list[str], budget: float, env=None) -> tuple[dict, str]:
    """Runs cmd with a timeout of min(budget, what is left); returns (stage record, stdout)."""
    limit = min(budget, self.left() - 5)
    record = {"stage": name, "command": " ".join(cmd)}
    if limit < 10:
      record.update(status="skipped", reason=f"no time left ({self.left():.0f} s of the run's budget)")
      self._finish(record, "")
      return record, ""
    t0 = time.monotonic()
    try:
      proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                            timeout=limit)
      stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
      record["status"] = "ok" if rc == 0 else "failed"
      if rc:
        record["reason"] = f"exit {rc}: " + " | ".join(stderr.strip().splitlines()[-3:])[-600:]
    except subprocess.TimeoutExpired as e:
      stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
      stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
      record.update(status="timeout", reason=f"stopped after {limit:.0f} s (its budget)")
    record["seconds"] = round(time.monotonic() - t0, 1)
    self.log.write(f"===== {name}: {record['status']} in {record['seconds']} s\n$ {record['command']}\n")
    self.log.write("\n".join(stderr.strip().splitlines()[-60:]) + "\n")
    self.log.flush()
    self._finish(record, stdout)
    return record, stdout

  def _finish(self, record: dict, stdout: str):
    self.stages.append(record)
    with open(os.path.join(self.out, "stages.jsonl"), "a") as f:
      f.write(json.dumps(record) + "\n")
    print(f"gpu_check: {record['stage']}: {record['status']} ({record.get('seconds', 0)} s)"
          + (f" - {record['reason']}" if record.get("reason") else ""), file=sys.stderr, flush=True)


def json_lines(text: str, stage: str, out: str) -> list[dict]:
  rows = []
  for line in text.splitlines():
    line = line.strip()
    if line.startswith("{"):
      try:
        rows.append({"stage": stage, **json.loads(line)})
      except json.JSONDecodeError:
        continue
  with open(os.path.join(out, "results.jsonl"), "a") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")
  return rows


ENV_PROBE = """
import json, os, platform, subprocess, jax, jaxlib
import importlib.metadata as md
def version(name):
  try:
    return md.version(name)
  except md.PackageNotFoundError:
    return None
from rf_jax.runinfo import git_commit
row = {"env": "versions", "python": platform.python_version(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
       **{name: version(name) for name in ("flax", "optax", "orbax-checkpoint", "tensorstore", "numpy", "triton",
                                          "jax-cuda13-plugin", "jax-cuda12-plugin")},
       "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
       "device_kind": jax.devices()[0].device_kind, "commit": git_commit()}
try:
  smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                       capture_output=True, text=True, timeout=20)
  row["nvidia_smi"] = smi.stdout.strip() or None
except (OSError, subprocess.SubprocessError):
  row["nvidia_smi"] = None
print(json.dumps(row))
"""


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, kernels in interpret mode")
  ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(ROOT, "gpu_check_out"))
  ap.add_argument("--budget", type=float, default=450.0, help="seconds for the whole run (default 450: 7.5 min)")
  ap.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak for MFU (H100/H200 SXM: 989)")
  a = ap.parse_args()
  os.makedirs(a.out, exist_ok=True)
  for name in ("results.jsonl", "stages.jsonl", "pytest.txt", "log.txt", "summary.md"):
    path = os.path.join(a.out, name)
    if os.path.exists(path):
      os.remove(path)
  py = sys.executable
  with open(os.path.join(a.out, "log.txt"), "a") as log:
    run = Run(a.out, a.budget, log)
    _, text = run.stage("env", [py, "-c", ENV_PROBE], 60)
    env_rows = json_lines(text, "env", a.out)

    # The GPU-marked tests (compiled kernels) and the XLA backend against the dense oracle, float32 matmuls at full
    # precision (no TF32). On a CPU the GPU tests are skipped.
    tests = ["tests/ops/kernels/test_gpu_attention.py::test_compiled_kernel_on_gpu"]
    if not a.dry_run:
      tests.append("tests/ops/test_reference.py")
    record, text = run.stage("tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *tests], 150,
                             env={"JAX_DEFAULT_MATMUL_PRECISION": "highest"})
    with open(os.path.join(a.out, "pytest.txt"), "w") as f:
      f.write(text)
    summary_line = next((ln for ln in reversed(text.splitlines()) if re.search(r"\d+ (passed|failed|skipped)", ln)),
                        "")
    record["pytest"] = summary_line.strip("= ")

    size = ["--small", "--iters", "3"] if a.dry_run else ["--iters", "20"]
    backends = ["--backends", "reference", "cudnn", "pallas_gpu", "pallas_gpu_rope_before"]  # not the TPU kernel
    _, text = run.stage("attention", [py, "scripts/bench_attention.py", "--check", *size, *backends], 150)
    attention = json_lines(text, "attention", a.out)
    passed = passing_backends(attention)

    backends = [b for b in ROLLOUT_BACKENDS if b in passed]
    if a.dry_run:  # a dry run proves the stage with one backend, the XLA one (an interpreted kernel is slow)
      backends = [b for b in backends if b == "reference"]
    for backend in backends:
      if a.dry_run:
        shape = ["--preset", "tiny", "--latent-hw", "8", "8", "--frames", "9"]
      else:
        shape = ["--preset", "wan2.1-t2v-1.3b", "--latent-hw", "60", "104", "--compute-dtype", "bfloat16",
                 "--param-dtype", "bfloat16", "--frames", "24", "--prompt-tokens", "128"]
      _, text = run.stage(f"rollout_{backend}", [py, "scripts/bench_rollout.py", *shape, "--policies",
                                                 "self_forcing_window21", "relax", "--attention", backend,
                                                 "--peak-tflops", str(a.peak_tflops)], 150)
      json_lines(text, f"rollout_{backend}", a.out)
    rows = [json.loads(ln) for ln in open(os.path.join(a.out, "results.jsonl"))] if os.path.exists(
        os.path.join(a.out, "results.jsonl")) else []
    summary = write_summary(a.out, run.stages, env_rows, rows, passed, a.dry_run)
  print(summary)
  return 0


def passing_backends(rows: list[dict]) -> list[str]:
  """Backends whose every case ran and stayed within PASS_ERROR of the oracle."""
  by_backend: dict[str, list[dict]] = {}
  for r in rows:
    if "backend" in r:
      by_backend.setdefault(r["backend"], []).append(r)
  ok = []
  for backend, rs in by_backend.items():
    if all("steady_median_ms" in r and r.get("rel_err_vs_oracle", 1.0) <= PASS_ERROR.get(r.get("dtype"), 5e-2)
           for r in rs):
      ok.append(backend)
  return ok


def write_summary(out: str, stages: list[dict], env_rows: list[dict], rows: list[dict], passed: list[str],
                  dry_run: bool) -> str:
  env = env_rows[0] if env_rows else {}
  lines = [f"# gpu_check{' (dry run: CPU, tiny sizes)' if dry_run else ''}", "",
           f"device: {env.get('nvidia_smi') or env.get('device_kind')} ({env.get('backend')}); jax {env.get('jax')}, "
           f"jaxlib {env.get('jaxlib')}, flax {env.get('flax')}, python {env.get('python')}; commit "
           f"{env.get('commit')}", "", "| stage | status | seconds | note |", "|---|---|---|---|"]
  for s in stages:
    note = s.get("pytest") or s.get("reason") or ""
    lines.append(f"| {s['stage']} | {s['status']} | {s.get('seconds', '')} | {note.replace('|', '/')[:200]} |")
  attention = [r for r in rows if r.get("stage") == "attention" and "case" in r]
  if attention:
    lines += ["", "attention (steady ms; TFLOP/s over the attended keys; error vs the dense oracle):", "",
              "| backend | dense21 ms | relax7 ms | warmup ms | relax7 speed-up | TFLOP/s dense21 / relax7 | max error |",
              "|---|---|---|---|---|---|---|"]
    backends = sorted({r["backend"] for r in attention})
    for b in backends:
      cell = {r["case"]: r for r in attention if r["backend"] == b}
      if any("skipped" in r for r in cell.values()):
        lines.append(f"| {b} | skipped | | | | | {next(iter(cell.values()))['skipped']} |")
        continue
      if any("error" in r for r in cell.values()):
        lines.append(f"| {b} | error | | | | | {next(r['error'] for r in cell.values() if 'error' in r)[:120]} |")
        continue
      ms = {c: cell[c].get("steady_median_ms") for c in ("dense21", "relax7", "warmup") if c in cell}
      speed = ms["dense21"] / ms["relax7"] if ms.get("dense21") and ms.get("relax7") else None
      err = max((r.get("rel_err_vs_oracle", 0.0) for r in cell.values()), default=None)
      lines.append(f"| {b} | {ms.get('dense21')} | {ms.get('relax7')} | {ms.get('warmup')} | "
                   f"{'' if speed is None else f'{speed:.2f}x'} | {cell.get('dense21', {}).get('tflops')} / "
                   f"{cell.get('relax7', {}).get('tflops')} | {err:.2e} |")
  rollout = [r for r in rows if str(r.get("stage", "")).startswith("rollout_") and "policy" in r]
  if rollout:
    lines += ["", "rollout (steady seconds per chunk of 3 latent frames; video frames per second; MFU):", "",
              "| backend | policy | s / chunk | video fps | TFLOP per chunk | MFU | compile s | peak bytes |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rollout:
      lines.append(f"| {r['attention']} | {r['policy']} | {r['steady_median_seconds_per_chunk']} | {r['video_fps']} | "
                   f"{r['steady_chunk_tflop']} | {r['mfu']} | {r['compile_seconds']} | {r['peak_bytes']} |")
  goals = []
  for b in passed:
    cell = {r["case"]: r for r in attention if r["backend"] == b and "steady_median_ms" in r}
    if "dense21" in cell and "relax7" in cell:
      speed = cell["dense21"]["steady_median_ms"] / cell["relax7"]["steady_median_ms"]
      goals.append(f"relax attention {speed:.2f}x faster than dense-21 with {b} (goal {GOAL_ATTENTION_SPEEDUP}x): "
                   f"{'met' if speed >= GOAL_ATTENTION_SPEEDUP else 'missed'}")
  relax = [r for r in rollout if r["policy"] == "relax"]
  if relax:
    best = max(relax, key=lambda r: r["video_fps"])
    goals.append(f"relax rollout ({best['model']}, {'x'.join(map(str, best['latent_hw']))} latents) "
                 f"{best['video_fps']} video fps with {best['attention']} (goal at 1.3B: {GOAL_VIDEO_FPS}), MFU "
                 f"{best['mfu']}: {'met' if best['video_fps'] >= GOAL_VIDEO_FPS else 'missed'}")
    fastest = {}
    for r in rollout:
      if r["policy"] not in fastest or r["steady_median_seconds_per_chunk"] < fastest[r["policy"]][1]:
        fastest[r["policy"]] = (r["attention"], r["steady_median_seconds_per_chunk"])
    goals.append("auto (rf_jax.ops.backend.AUTO) should pick, on this device and dtype: "
                 + ", ".join(f"{p}: {b}" for p, (b, _) in fastest.items()))
  if goals:
    lines += ["", *[f"- {g}" for g in goals]]
  text = "\n".join(lines) + "\n"
  with open(os.path.join(out, "summary.md"), "w") as f:
    f.write(text)
  return text


if __name__ == "__main__":
  sys.exit(main())
