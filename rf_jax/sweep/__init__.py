"""Sweeps: a grid of memory configurations x prompts x seeds, run (or resumed) into a zarr store.

  config.py   the grid and run settings (`Sweep`, `grid`, `load_sweep`, `label`)
  store.py    the zarr v3 arrays (tensorstore)
  run.py      planning, inputs, the run loop, resuming (`run_sweep`)
  report.py   results.csv and summary.png from the finished units
"""

from rf_jax.sweep.config import FORMAT, Sweep, grid, label, load_sweep
from rf_jax.sweep.run import Unit, layouts, plan, run_sweep
from rf_jax.sweep.store import Store

__all__ = ["FORMAT", "Store", "Sweep", "Unit", "grid", "label", "layouts", "load_sweep", "plan", "run_sweep"]
