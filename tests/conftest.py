import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # for numpy_reference

# XLA's compiled programs are kept on disk for the whole run (and the subprocesses tests start): the same tiny models
# and rollout steps compile in many tests, and compiling dominates CPU test time.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(HERE, "..", ".cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.3")

FIXTURES = os.environ.get("RF_JAX_FIXTURES", os.path.join(HERE, "..", "..", "shared", "fixtures"))


def fixture_dir(name: str) -> str:
  path = os.path.join(FIXTURES, name)
  if not os.path.isdir(path):
    if os.environ.get("RF_JAX_REQUIRE_FIXTURES"):
      pytest.fail(f"reference fixtures missing at {path} (RF_JAX_REQUIRE_FIXTURES is set)")
    pytest.skip(f"reference fixtures not found at {path}; set RF_JAX_FIXTURES")
  return path


def pytest_collection_modifyitems(config, items):
  """Tests marked `gpu` run only where JAX sees a GPU (never in CI, which has none)."""
  import jax
  if jax.default_backend() == "gpu":
    return
  skip = pytest.mark.skip(reason="needs a GPU (jax.default_backend() is not 'gpu')")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)
