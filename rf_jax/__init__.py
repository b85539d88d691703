"""rf_jax: autoregressive long-video diffusion with structured KV memory, on a JAX/Flax causal Wan2.1 DiT.

Public API:
    ModelConfig, PRESETS, get_preset          model configuration
    CausalWanDiT, TextKV, MemoryView          the DiT (rf_jax.model)
    FlowSchedule                              the flow-matching schedule (rf_jax.sampling)
    load_model, save_checkpoint               orbax checkpoints (rf_jax.checkpoint)
    convert_checkpoint                        PyTorch -> rf_jax (rf_jax.convert)
"""

from rf_jax.checkpoint import load_model, load_params, save_checkpoint
from rf_jax.config import PRESETS, ModelConfig, get_preset
from rf_jax.convert import convert_checkpoint
from rf_jax.model import CausalWanDiT, MemoryView, TextKV
from rf_jax.sampling import FlowSchedule

__version__ = "0.1.0"
__all__ = ["CausalWanDiT", "FlowSchedule", "MemoryView", "ModelConfig", "PRESETS", "TextKV", "convert_checkpoint",
           "get_preset", "load_model", "load_params", "save_checkpoint"]
