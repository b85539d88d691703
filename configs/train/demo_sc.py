"""Stage 3 of the built-in demo model: a short fine-tune of stage 2 (configs/train/demo.py) that weights the low
noise levels more (the fine detail that keeps shapes crisp) and shows half the clips their own reconstructions as
context (self-context, against the drift of its own rollouts).

    rf-jax train configs/train/demo_sc.py --out runs/demo_sc        # starts from runs/demo/model
"""

import dataclasses
import os

from rf_jax.train import OptimConfig, load_train_config

STAGE2 = load_train_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py"))

TRAIN = dataclasses.replace(
    STAGE2,
    optim=OptimConfig(lr=2e-4, warmup_steps=30, end_lr_ratio=0.1, weight_decay=0.01, clip_norm=1.0),
    steps=700,
    x0_loss_sigma_floor=0.3,
    self_context=0.5,
    ema_decay=0.99,
    save_every=350,
    init=os.environ.get("RF_JAX_DEMO_STAGE2", "runs/demo/model"),
)
