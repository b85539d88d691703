"""Training the causal DiT: diffusion-forcing flow matching, AdamW, EMA, orbax checkpoints (rf-jax train)."""

from rf_jax.train.config import OptimConfig, TrainConfig, load_train_config
from rf_jax.train.loop import train

__all__ = ["OptimConfig", "TrainConfig", "load_train_config", "train"]
