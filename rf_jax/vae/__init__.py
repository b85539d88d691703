"""The Wan2.1 video VAE: encoder, causal decoder, streaming decode."""

from rf_jax.vae.wan_vae import PRESETS, VAE_TINY, WAN21_VAE, VAEConfig, WanVAE

__all__ = ["PRESETS", "VAEConfig", "VAE_TINY", "WAN21_VAE", "WanVAE"]
