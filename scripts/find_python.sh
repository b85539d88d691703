# Sourced by the setup scripts: find_python prints a Python >= 3.12 (jax >= 0.11 needs it): $RF_JAX_PYTHON, python3.12
# on PATH, or a pyenv / system install; returns 1 when there is none.
find_python() {
  local c
  for c in "${RF_JAX_PYTHON:-}" python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 \
           /usr/bin/python3.12; do
    [ -n "$c" ] || continue
    if "$c" -c 'import sys; sys.exit(0 if sys.version_info[:2] >= (3, 12) else 1)' >/dev/null 2>&1; then
      echo "$c"; return 0
    fi
  done
  return 1
}
