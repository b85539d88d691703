"""JAX's persistent compilation cache, as the command line uses it: a compiled chunk step is kept on disk, so a
second identical `rf-jax generate` or `sweep` (same model shapes, memory layout, sampler, mesh, jax version and
device) loads it instead of compiling again (the demo's first chunk: 5.8 s compiling, 1.0 s from the cache, on this
project's CPU; big models on TPU hosts take much longer to compile).

Where: `--compile-cache DIR`, else $RF_JAX_COMPILE_CACHE, else $JAX_COMPILATION_CACHE_DIR (jax's own variable, left
as it is), else $RF_JAX_CACHE/jax, else ~/.cache/rf_jax/jax. `--no-compile-cache` or RF_JAX_COMPILE_CACHE=off turns
it off. Every compilation is kept, however short (jax's default skips those under a second).

`events()` counts jax's cache hits and misses in this process, so a caller can tell where a compilation came from
(`Rollout.step_compile`).
"""

from __future__ import annotations

import os

import jax
from jax import monitoring

ENV = "RF_JAX_COMPILE_CACHE"
_OFF = ("", "0", "off", "none", "false")
_events = {"hits": 0, "misses": 0}
_listening = [False]


def default_dir() -> str:
  root = os.environ.get("RF_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "rf_jax")
  return os.path.join(root, "jax")


def resolve_dir(flag: str | None = None, disabled: bool = False) -> str | None:
  """The cache folder the command line uses (see the module docstring), or None when it is off."""
  if disabled:
    return None
  if flag:
    return os.path.abspath(os.path.expanduser(flag))
  env = os.environ.get(ENV)
  if env is not None:
    return None if env.strip().lower() in _OFF else os.path.abspath(os.path.expanduser(env))
  return os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_dir()


def configure(path: str | None) -> str | None:
  """Points jax's persistent cache at `path` (None: off) before anything is compiled; returns it."""
  _listen()
  if path is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def events() -> tuple[int, int]:
  """(hits, misses) of the persistent cache in this process so far."""
  _listen()
  return _events["hits"], _events["misses"]


def outcome(before: tuple[int, int]) -> str:
  """What happened to the compilations since `before = events()`: "cache" (loaded from disk), "compiled" (and
  written to the cache), or "compiled, no cache"."""
  hits, misses = events()
  if hits > before[0] and misses == before[1]:
    return "cache"
  return "compiled" if misses > before[1] else "compiled, no cache"


def _listen() -> None:
  if _listening[0]:
    return
  _listening[0] = True

  def on_event(event: str, **_):
    if event == "/jax/compilation_cache/cache_hits":
      _events["hits"] += 1
    elif event == "/jax/compilation_cache/cache_misses":
      _events["misses"] += 1

  monitoring.register_event_listener(on_event)


def setup(directory: str | None = None, disabled: bool = False) -> str | None:
  """The command line's --compile-cache DIR / --no-compile-cache: `configure(resolve_dir(...))`."""
  return configure(resolve_dir(directory, disabled))
