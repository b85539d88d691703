"""The built-in demo model (stage 2): a small causal DiT on 32x32 bouncing shapes in pixel space, trained on a 2-core
CPU. It starts from stage 1 (configs/train/demo_base.py) and learns to continue 12-frame clips (4 chunks).

    rf-jax train configs/train/demo_base.py --out runs/demo_base     # stage 1, ~20 min
    rf-jax train configs/train/demo.py --out runs/demo               # this, ~17 min
    python scripts/make_demo.py runs/demo                            # package it as rf_jax/assets/demo
"""

import dataclasses
import os

from rf_jax.train import OptimConfig, load_train_config

BASE = load_train_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_base.py"))

TRAIN = dataclasses.replace(
    BASE,
    optim=OptimConfig(lr=4e-4, warmup_steps=50, end_lr_ratio=0.05, weight_decay=0.01, clip_norm=1.0),
    steps=1500,
    batch=4,
    clip_frames=12,
    ema_decay=0.995,
    save_every=300,
    keep=2,
    init=os.environ.get("RF_JAX_DEMO_BASE", "runs/demo_base/model"),
)
