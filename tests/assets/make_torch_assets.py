"""Writes tests/assets/self_forcing_tiny.{pt,npz} with a real PyTorch (run once; torch is not needed by the tests).

    python tests/assets/make_torch_assets.py      # any Python with torch and numpy

The .pt mimics a Self-Forcing checkpoint: {'generator': bf16 state dict, 'generator_ema': float32 state dict},
keys prefixed 'model.', one tensor saved as a non-contiguous (transposed) view. The .npz holds every tensor as
float32 under its key (prefixed by the entry name) for the reader test to compare with.
"""
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from numpy_reference import random_state_dict  # noqa: E402

ARGS = dict(dim=16, ffn_dim=32, num_heads=2, num_layers=2, in_dim=16, out_dim=16, freq_dim=8, text_dim=8,
            text_len=4, patch_size=(1, 2, 2), eps=1e-6)


def main():
  here = os.path.dirname(os.path.abspath(__file__))
  sd = random_state_dict(ARGS, seed=5)
  ema = {f"model.{k}": torch.from_numpy(v.copy()) for k, v in sd.items()}
  w = ema["model.blocks.0.ffn.0.weight"]
  ema["model.blocks.0.ffn.0.weight"] = w.t().contiguous().t()  # same values, column-major strides
  assert not ema["model.blocks.0.ffn.0.weight"].is_contiguous()
  gen = {k: (v * 0.5).to(torch.bfloat16) for k, v in ema.items()}
  torch.save({"generator": gen, "generator_ema": ema}, os.path.join(here, "self_forcing_tiny.pt"))
  arrays = {f"generator_ema/{k}": v.float().numpy() for k, v in ema.items()}
  arrays.update({f"generator/{k}": v.float().numpy() for k, v in gen.items()})
  np.savez_compressed(os.path.join(here, "self_forcing_tiny.npz"), **arrays)


if __name__ == "__main__":
  main()
