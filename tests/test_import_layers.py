"""The package's layering (pyproject.toml's import-linter contracts) holds: layers point down, no cycles."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_contracts_are_kept():
  exe = shutil.which("lint-imports", path=os.path.dirname(sys.executable))
  if exe is None:
    pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
  run = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stdout[-3000:]
  assert "0 broken" in run.stdout
