#!/usr/bin/env bash
# Creates .venv with Python 3.12 and installs rf_jax (editable) with the pinned, tested versions.
#   bash scripts/setup_env.sh            # CPU
#   RF_JAX_EXTRAS=dev,cuda bash scripts/setup_env.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RF_JAX_VENV:-.venv}"
EXTRAS="${RF_JAX_EXTRAS:-dev}"

source scripts/find_python.sh

if [ ! -x "$VENV/bin/python" ]; then
  PY="$(find_python)" || { echo "setup_env: Python >= 3.12 not found (jax >= 0.11 needs it); set RF_JAX_PYTHON" >&2; exit 1; }
  echo "setup_env: creating $VENV with $PY" >&2
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[$EXTRAS]" 2>&1 \
  | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c 'import jax, flax, rf_jax; print("setup_env: jax", jax.__version__, "flax", flax.__version__, "devices", jax.devices())' >&2
