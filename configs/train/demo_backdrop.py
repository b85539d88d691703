"""The conditional demo model: the shipped demo (rf_jax/assets/demo) fine-tuned to read a one-word prompt, the
backdrop its shapes bounce over (black, blue, green, red or purple), and to follow a prompt switch: a third of the
clips show context over another backdrop than the prompt's, as a rollout's memory does after a switch.

    rf-jax train configs/train/demo_backdrop.py --out runs/demo_backdrop     # starts from the shipped demo
    python scripts/make_demo.py runs/demo_backdrop --backdrop              # package it as rf_jax/assets/demo_backdrop
"""

import dataclasses
import os

from rf_jax.train import OptimConfig, load_train_config

HERE = os.path.dirname(os.path.abspath(__file__))
STAGE4 = load_train_config(os.path.join(HERE, "demo_fade.py"))

TRAIN = dataclasses.replace(
    STAGE4,
    optim=OptimConfig(lr=3e-4, warmup_steps=50, end_lr_ratio=0.1, weight_decay=0.01, clip_norm=1.0),
    steps=1800,
    backdrops=("black", "blue", "green", "red", "purple"),
    backdrop_switch=0.35,
    data_seed=7,  # clips the shipped demo never saw
    save_every=300,
    init=os.environ.get("RF_JAX_DEMO", os.path.normpath(os.path.join(HERE, "..", "..", "rf_jax", "assets", "demo"))),
)
