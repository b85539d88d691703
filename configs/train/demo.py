"""The built-in demo model: a small causal DiT on 32x32 bouncing shapes in pixel space, trained on a 2-core CPU.

    rf-jax train configs/train/demo.py --out runs/demo
"""

from rf_jax.config import ModelConfig
from rf_jax.data import ShapesConfig
from rf_jax.train import OptimConfig, TrainConfig

TRAIN = TrainConfig(
    model=ModelConfig(dim=96, ffn_dim=256, num_heads=3, num_layers=3, in_dim=3, out_dim=3, freq_dim=64,
                      text_dim=16, text_len=4, patch_size=(1, 4, 4)),
    data=ShapesConfig(size=32, frames=48, max_shapes=3),
    optim=OptimConfig(lr=1e-3, warmup_steps=150, end_lr_ratio=0.05, weight_decay=0.01, clip_norm=1.0),
    steps=3600,
    batch=4,
    clip_frames=12,
    chunk_frames=3,
    shift=3.0,
    ema_decay=0.998,
    save_every=300,
    keep=3,
    log_every=25,
)
