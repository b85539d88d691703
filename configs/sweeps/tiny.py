"""A sweep that runs anywhere in a few minutes: the tiny preset's random weights, Relax Forcing's lambda against
the peers' windows and Slow-Fast memory, two random prompts x two seeds.

    rf-jax sweep configs/sweeps/tiny.py --out out/sweep_tiny
"""

from rf_jax.memory import RelaxPolicy, SlowFastPolicy, WindowPolicy
from rf_jax.sweep import Sweep, grid

SWEEP = Sweep(
    model="tiny",
    policies=(
        *grid(RelaxPolicy(reservoir_frames=24), lam=[0.0, 1.0, 2.0, 4.0]),  # one compile for all four
        WindowPolicy(window_frames=12, sink_frames=3),  # LongLive-style sink + window
        SlowFastPolicy(),
    ),
    prompts=("random:0", "random:1"),
    seeds=(0, 1),
    frames=30,
    batch=2,
)
