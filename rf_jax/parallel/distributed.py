"""Several processes (hosts) as one JAX runtime: `jax.distributed` set up from flags or the environment.

    --coordinator HOST:PORT --num-processes N --process-id I     explicit (GPU clusters, local tests)
    RF_JAX_COORDINATOR / RF_JAX_NUM_PROCESSES / RF_JAX_PROCESS_ID   the same through the environment
    --distributed                                                  JAX's own detection (TPU pods, SLURM, Open MPI)

A TPU pod slice of several hosts is detected without a flag. Must run before anything touches a device.
"""

from __future__ import annotations

import os

import jax

_ENV = {"coordinator": "RF_JAX_COORDINATOR", "num_processes": "RF_JAX_NUM_PROCESSES",
        "process_id": "RF_JAX_PROCESS_ID"}


def _on_multihost_tpu_slice() -> bool:
  return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
               *, auto: bool = False) -> bool:
  """Starts `jax.distributed` when asked for (flags, environment, a multi-host TPU slice); returns whether it did.

  On CPU the processes talk through gloo (how the tests run two processes of 4 fake devices each).
  """
  coordinator = coordinator or os.environ.get(_ENV["coordinator"])
  if num_processes is None and os.environ.get(_ENV["num_processes"]):
    num_processes = _int_env("num_processes")
  if process_id is None and os.environ.get(_ENV["process_id"]):
    process_id = _int_env("process_id")
  if jax.distributed.is_initialized():
    return True
  if coordinator is not None:
    missing = [f"--{n.replace('_', '-')} (or {_ENV[n]})" for n, v in
               (("num_processes", num_processes), ("process_id", process_id)) if v is None]
    if missing:
      raise ValueError(f"--coordinator {coordinator} also needs {' and '.join(missing)}")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process-id {process_id} is not in [0, --num-processes {num_processes})")
    if ":" not in coordinator:
      raise ValueError(f"--coordinator {coordinator!r} is not HOST:PORT")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return True
  if num_processes is not None or process_id is not None:
    raise ValueError("--num-processes/--process-id need --coordinator HOST:PORT (or RF_JAX_COORDINATOR)")
  if auto or _on_multihost_tpu_slice():
    jax.distributed.initialize()
    return True
  return False


def _int_env(name: str) -> int:
  value = os.environ[_ENV[name]]
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{_ENV[name]}={value!r} is not an integer") from None


def is_leader() -> bool:
  """Process 0: the one that writes shared files (summaries, tables, markers)."""
  return jax.process_index() == 0


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier `name` (nothing to wait for with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
