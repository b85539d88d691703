"""PyTorch -> rf_jax weight conversion, for each model of the Wan pipeline (the config's type picks the rules:
`ModelConfig` the DiT, `UMT5Config` the text encoder, `VAEConfig` the VAE).

    tensors, info = open_source(path, weights="generator_ema")   # lists tensors, reads nothing
    params = convert_tensors(tensors, config)                     # strict; {flax path: np.ndarray}
    convert_checkpoint(src, out, config=config)                   # one model -> one checkpoint
    convert_wan_folder(wan_dir, out)                              # DiT + umT5 + VAE + tokenizer (wan_folder.py)
"""

from rf_jax.convert.core import (DTYPES, convert_checkpoint, convert_tensors, convert_umt5_tensors,
                                 convert_vae_tensors, encoder_from_params, model_of, param_dtype_for, rules_for,
                                 vae_from_params)
from rf_jax.convert.readers import SourceTensor, open_source
from rf_jax.convert.torch_pickle import UnsafePickleError, load_pt
from rf_jax.convert.wan_dit import RULES, ConversionError

__all__ = ["ConversionError", "DTYPES", "RULES", "SourceTensor", "UnsafePickleError", "convert_checkpoint",
           "convert_tensors", "convert_umt5_tensors", "convert_vae_tensors", "encoder_from_params", "load_pt",
           "model_of", "open_source", "param_dtype_for", "rules_for", "vae_from_params"]
