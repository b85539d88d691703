#!/usr/bin/env bash
# Are the minimum versions pyproject.toml claims honest? Builds a fresh venv with every dependency at its lowest
# allowed version (each "name>=X" becomes "name==X"; jaxlib follows jax) and runs the core tests there: model,
# memory, sampling, ops, kernels (CPU; the Pallas kernels in interpret mode).
#
#   bash scripts/check_min_versions.sh                 # venv in /tmp/rf_jax_min_venv (RF_JAX_MIN_VENV to move it)
#   bash scripts/check_min_versions.sh tests/model     # other test paths
#
# Prints the installed versions, then pytest's summary; exits with pytest's status. CI keeps its pinned versions
# (constraints.txt); this script is the proof that the lower bounds work, run before a release or a bound changes.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RF_JAX_MIN_VENV:-/tmp/rf_jax_min_venv}"
source scripts/find_python.sh
PY="$(find_python)" || { echo "check_min_versions: Python >= 3.12 not found; set RF_JAX_PYTHON" >&2; exit 1; }

pins=$("$PY" - <<'EOF'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = project["dependencies"] + project["optional-dependencies"]["dev"]
out = []
for dep in deps:
  m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)\s*", dep.split(";")[0].split("#")[0])
  if not m:
    raise SystemExit(f"check_min_versions: {dep!r} has no '>=' lower bound to pin")
  name, version = m.groups()
  out.append(f"{name}=={version}")
  if name == "jax":
    out.append(f"jaxlib=={version}")
print(" ".join(out))
EOF
)
echo "check_min_versions: pins: $pins" >&2
rm -rf "$VENV"
"$PY" -m venv "$VENV"
install() {  # pip, its warnings about missing local wheel folders left out; a failure stops the check
  local log rc=0
  log=$("$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1) || rc=$?
  grep -v "^WARNING: Location" <<<"$log" >&2 || true
  if [ "$rc" -ne 0 ]; then
    echo "check_min_versions: FAILED: the lowest versions pyproject.toml claims cannot be installed together" >&2
    exit "$rc"
  fi
}
install $pins
install --no-deps -e .
"$VENV/bin/python" - <<'EOF' >&2
import importlib.metadata as md
names = ["jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorstore", "numpy", "ml_dtypes", "safetensors",
         "tokenizers", "matplotlib", "ftfy", "imageio-ffmpeg", "tqdm", "pytest", "pytest-xdist"]
print("check_min_versions: installed", ", ".join(f"{n} {md.version(n)}" for n in names))
EOF
if [ "$#" -eq 0 ]; then
  set -- tests/model tests/memory tests/sampling tests/ops
fi
# Its own compilation cache: executables from the pinned jaxlib are not those of another.
JAX_COMPILATION_CACHE_DIR="$VENV/jax_cache" "$VENV/bin/python" -m pytest -q -n 2 -p no:cacheprovider "$@"
