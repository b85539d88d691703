"""The command line keeps compiled steps on disk: a second identical `rf-jax generate` (a fresh process) loads its
chunk step instead of compiling it, and says so in summary.json; the cache can be moved and turned off."""

import json
import os
import subprocess
import sys

import pytest

from rf_jax import compile_cache

GENERATE = ["-m", "rf_jax.cli", "generate", "--preset", "tiny", "--frames", "6", "--quiet", "--no-video"]


def generate(tmp_path, name, env, *flags):
  out = tmp_path / name
  run = subprocess.run([sys.executable, *GENERATE, "--out", str(out), *flags], env=env, capture_output=True,
                       text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads((out / "summary.json").read_text())


def test_a_second_identical_run_loads_the_chunk_step_from_the_cache(tmp_path):
  env = dict(os.environ, RF_JAX_COMPILE_CACHE=str(tmp_path / "cache"))
  first = generate(tmp_path, "a", env)
  second = generate(tmp_path, "b", env)
  assert first["chunk_step_from"] == "compiled" and second["chunk_step_from"] == "cache"
  assert first["compile_cache"] == second["compile_cache"] == str(tmp_path / "cache")
  assert os.listdir(tmp_path / "cache")
  off = generate(tmp_path, "c", env, "--no-compile-cache")
  assert off["chunk_step_from"] == "compiled, no cache" and off["compile_cache"] is None
  # (--compile-cache DIR is routed by the same resolve_dir as the environment: test_where_the_cache_lives)


@pytest.mark.parametrize("env,flag,off,want", [
    ({}, None, False, "default"), ({"RF_JAX_COMPILE_CACHE": "off"}, None, False, None),
    ({"RF_JAX_COMPILE_CACHE": "/x"}, "/y", False, "/y"), ({"JAX_COMPILATION_CACHE_DIR": "/j"}, None, False, "/j"),
    ({"RF_JAX_COMPILE_CACHE": "/x"}, None, True, None), ({"RF_JAX_CACHE": "/r"}, None, False, "/r/jax")])
def test_where_the_cache_lives(monkeypatch, env, flag, off, want):
  for name in ("RF_JAX_COMPILE_CACHE", "JAX_COMPILATION_CACHE_DIR", "RF_JAX_CACHE"):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  if want == "default":
    want = os.path.join(os.path.expanduser("~"), ".cache", "rf_jax", "jax")
  assert compile_cache.resolve_dir(flag, off) == want
