"""Relax Forcing's lambda and reservoir on the 1.3B Self-Forcing model, against Slow-Fast memory and a LongLive
window: 6 configurations x 4 prompt-embedding files x 4 seeds, 120 latent frames (about 30 s of video).

Needs a converted checkpoint and prompt embeddings (umT5 outputs saved as .npy [P, 4096]) beside this file:
    rf-jax convert self_forcing_dmd.pt checkpoints/self_forcing_1.3b --config wan2.1-t2v-1.3b
    rf-jax sweep configs/sweeps/relax_1p3b.py --out out/relax_1p3b --mesh data=8   # 8 GPUs / TPU chips
"""

from rf_jax.memory import RelaxPolicy, SlowFastPolicy, WindowPolicy
from rf_jax.sweep import Sweep, grid

SWEEP = Sweep(
    model="../../checkpoints/self_forcing_1.3b",  # relative to this file
    policies=(
        *grid(RelaxPolicy(), lam=[0.0, 1.0, 2.0, 4.0]),  # the default 120-frame reservoir; one compile
        WindowPolicy(window_frames=21, sink_frames=3),
        SlowFastPolicy(),
    ),
    prompts=tuple(f"../../prompts/prompt_{i}.npy" for i in range(4)),
    seeds=(0, 1, 2, 3),
    frames=120,
    batch=8,
    compute_dtype="bfloat16",
)
