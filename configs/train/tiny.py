"""A training run of seconds (the tests' size): a 2-layer DiT on 16x16 shapes.

    rf-jax train configs/train/tiny.py --out runs/tiny
"""

from rf_jax.config import ModelConfig
from rf_jax.data import ShapesConfig
from rf_jax.train import OptimConfig, TrainConfig

TRAIN = TrainConfig(
    model=ModelConfig(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=3, out_dim=3, freq_dim=16,
                      text_dim=8, text_len=2, patch_size=(1, 4, 4)),
    data=ShapesConfig(size=16, frames=12, max_shapes=2, radius=(2.5, 4.0)),
    optim=OptimConfig(lr=2e-3, warmup_steps=5),
    steps=40,
    batch=4,
    clip_frames=6,
    save_every=10,
    keep=2,
    log_every=5,
)
