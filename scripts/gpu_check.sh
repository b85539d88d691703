#!/usr/bin/env bash
# The GPU check: one offline command that checks, measures and records everything GPU-side (scripts/gpu_check.py
# says what) in under 8 minutes, every stage under its own deadline. For the machine the device tool lends: no
# network, its own Python 3.12 with jax (CUDA), flax, optax, orbax, tensorstore, pytest preinstalled; rf_jax runs
# from this working tree (PYTHONPATH), and small wheels it lacks come from a carried .whl/ folder.
#
#   bash scripts/gpu_check.sh --fetch-wheels        # here, once, with network: ftfy, wcwidth -> .whl/ (git-ignored)
#   RF_JAX_COMMIT=<sha> bash scripts/gpu_check.sh   # there (device run, carry [".whl"]): results in $OUT
#   bash scripts/gpu_check.sh --dry-run             # anywhere, CPU: the same stages at tiny sizes (what CI runs)
#
# Other options go to gpu_check.py (--out DIR, --budget SECONDS, --peak-tflops). Python: $RF_JAX_GPU_PYTHON, else
# .venv/bin/python when it exists (a dry run here), else python3 (the device's).
set -uo pipefail
cd "$(dirname "$0")/.."
WHEELS=(ftfy==6.3.1 wcwidth==0.2.13)  # pure Python; the device lacks them (prompt cleaning). Nothing else is needed.

if [ "${1:-}" = "--fetch-wheels" ]; then  # any Python with pip will do: the wheels are for 3.12, pure Python
  PY=${RF_JAX_PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
  mkdir -p .whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    -d .whl "${WHEELS[@]}" && ls -l .whl
  exit $?
fi

if [ -n "${RF_JAX_GPU_PYTHON:-}" ]; then
  PY=$RF_JAX_GPU_PYTHON
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
else
  PY=python3
fi
SITE=""
if compgen -G ".whl/*.whl" >/dev/null; then
  SITE=/tmp/rf_jax_site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || echo "gpu_check: could not install the carried wheels in .whl/; going on without them" >&2
fi
export PYTHONPATH="$PWD${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
exec "$PY" scripts/gpu_check.py "$@"
