"""Stage 1 of the built-in demo model: the causal DiT learns the shapes on short clips (2 chunks, 3x cheaper per
clip than 12 frames), before configs/train/demo.py teaches it 12-frame context.

    rf-jax train configs/train/demo_base.py --out runs/demo_base     # ~20 min on a 2-core CPU
    rf-jax train configs/train/demo.py --out runs/demo               # stage 2, starts from runs/demo_base/model

x0 prediction with the x0 loss: a narrow pixel-space model cannot learn to reproduce the noise that flow prediction
asks of it; predicting the clean frame is what it can do (README, The demo model).
"""

from rf_jax.config import ModelConfig
from rf_jax.data import ShapesConfig
from rf_jax.train import OptimConfig, TrainConfig

MODEL = ModelConfig(dim=96, ffn_dim=256, num_heads=3, num_layers=3, in_dim=3, out_dim=3, freq_dim=64, text_dim=16,
                    text_len=4, patch_size=(1, 4, 4), prediction="x0")

TRAIN = TrainConfig(
    model=MODEL,
    data=ShapesConfig(size=32, frames=48, max_shapes=3),
    optim=OptimConfig(lr=1e-3, warmup_steps=150, end_lr_ratio=0.2, weight_decay=0.01, clip_norm=1.0),
    steps=3000,
    batch=8,
    clip_frames=6,
    chunk_frames=3,
    shift=3.0,
    loss="x0",
    ema_decay=0.998,
    save_every=500,
    keep=2,
    log_every=25,
)
