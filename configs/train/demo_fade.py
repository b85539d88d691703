"""Stage 4 of the built-in demo model (the shipped one): a fine-tune of stage 3 (configs/train/demo_sc.py) that shows
three clips in four their clean context faded towards the background (each frame by its own factor in [0.1, 1])
with full-strength targets, so that the model restores shapes its own rollouts have let fade instead of fading them
further (README, The demo model).

    rf-jax train configs/train/demo_fade.py --out runs/demo_fade    # starts from runs/demo_sc/model, ~20 min
    python scripts/make_demo.py runs/demo_fade                      # package it as rf_jax/assets/demo
"""

import dataclasses
import os

from rf_jax.train import OptimConfig, load_train_config

STAGE3 = load_train_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_sc.py"))

TRAIN = dataclasses.replace(
    STAGE3,
    optim=OptimConfig(lr=3e-4, warmup_steps=50, end_lr_ratio=0.1, weight_decay=0.01, clip_norm=1.0),
    steps=1800,
    context_fade=0.75,
    context_fade_min=0.1,
    save_every=300,
    init=os.environ.get("RF_JAX_DEMO_STAGE3", "runs/demo_sc/model"),
)
