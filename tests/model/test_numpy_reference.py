"""The independent float64 NumPy reference reproduces the PyTorch fixtures, and rf_jax matches it on sizes the
fixtures never had (odd RoPE splits, other widths, other latent sizes, a local window)."""

import json

import numpy as np
import pytest

from conftest import fixture_dir
from numpy_reference import forward_train, write_reference_folder
from rf_jax import cli
from rf_jax.convert.readers import list_safetensors


@pytest.mark.parametrize("name", ["A", "C"])
def test_numpy_reference_reproduces_pytorch(name):
  path = fixture_dir(name)
  config = json.load(open(f"{path}/config.json"))
  sd = {t.key: t.load() for t in list_safetensors(f"{path}/model.safetensors")}
  z = np.load(f"{path}/forward_train.npz")
  out, acts = forward_train(sd, config["constructor_args"], z["x"], z["t"], z["context"])
  assert np.linalg.norm(out - z["out"]) / np.linalg.norm(z["out"]) < 5e-6
  for k, v in acts.items():
    assert np.linalg.norm(v - z[k]) / np.linalg.norm(z[k]) < 5e-6, k


UNSEEN = {
    # head_dim 20: 10 pairs split 4/3/3; 3 heads; a 5x3 patch grid; 3-frame local window
    "hd20_window": (dict(dim=60, ffn_dim=96, num_heads=3, num_layers=3, freq_dim=16, text_dim=24, text_len=10,
                         local_attn_size=3), (10, 6)),
    # head_dim 24: 12 pairs split 4/4/4; one layer; a single-token-wide grid
    "hd24": (dict(dim=48, ffn_dim=64, num_heads=2, num_layers=1, freq_dim=64, text_dim=16, text_len=7), (4, 2)),
}


@pytest.mark.parametrize("name", sorted(UNSEEN))
def test_check_reference_passes_on_unseen_sizes(tmp_path, capsys, name):
  extra, latent_hw = UNSEEN[name]
  args = dict(model_type="t2v", patch_size=(1, 2, 2), in_dim=16, out_dim=16, eps=1e-6, qk_norm=True,
              cross_attn_norm=True, local_attn_size=-1, sink_size=0)
  args.update(extra)
  folder = write_reference_folder(str(tmp_path / name), args, latent_hw=latent_hw)
  assert cli.main(["check-reference", folder, "--tolerance", "1e-5"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert json.loads(lines[-1])["passed"] is True
  assert any(line.startswith("forward/act_block") for line in lines)
  assert sum(" PASS" in line for line in lines) == 12 + args["num_layers"]  # 4 rope + 8 forward + blocks


def test_check_reference_fails_on_wrong_weights(tmp_path, capsys):
  args = dict(model_type="t2v", patch_size=(1, 2, 2), in_dim=16, out_dim=16, eps=1e-6, qk_norm=True,
              cross_attn_norm=True, local_attn_size=-1, sink_size=0, dim=48, ffn_dim=64, num_heads=2,
              num_layers=1, freq_dim=64, text_dim=16, text_len=7)
  folder = write_reference_folder(str(tmp_path / "f"), args, latent_hw=(4, 2))
  z = dict(np.load(f"{folder}/forward_train.npz"))
  z["out"] = z["out"] * 1.01
  np.savez(f"{folder}/forward_train.npz", **z)
  assert cli.main(["check-reference", folder]) == 1
  out = capsys.readouterr().out
  assert "forward/out" in out and "FAIL" in out and '"passed": false' in out


def test_numpy_rollout_reproduces_pytorch_fixture_c():
  """The float64 window rollout reproduces fixture C's rollout before it is trusted on other sizes."""
  from numpy_reference import rollout_window, warped_steps
  path = fixture_dir("C")
  config = json.load(open(f"{path}/config.json"))
  sd = {t.key: t.load() for t in list_safetensors(f"{path}/model.safetensors")}
  z = np.load(f"{path}/rollout.npz")
  steps = warped_steps([1000, 750, 500, 250])
  np.testing.assert_array_equal(steps, z["denoising_step_list"])
  out = rollout_window(sd, config["constructor_args"], z["noise"], z["context"], z["renoise"], steps, chunk=3)
  assert np.abs(out["final_latents"] - z["final_latents"]).max() < 5e-6
  assert np.abs(out["call_x0_pred"] - z["call_x0_pred"]).max() < 5e-6
  assert np.abs(out["kv_after_chunk4_k"] - z["kv_after_chunk4_k"]).max() < 5e-6


@pytest.mark.parametrize("extra,latent_hw,chunk,raw_steps", [
    # head_dim 20 (RoPE 4/3/3), a 5x3 grid, 2-frame chunks, a 5-frame window with a 1-frame sink, 3 steps
    (dict(dim=60, ffn_dim=96, num_heads=3, num_layers=2, freq_dim=16, text_dim=24, text_len=10,
          local_attn_size=5, sink_size=1), (10, 6), 2, (1000, 750, 500)),
    # head_dim 24 (4/4/4), 1-frame chunks, a global window, 2 steps
    (dict(dim=48, ffn_dim=64, num_heads=2, num_layers=1, freq_dim=64, text_dim=16, text_len=7,
          local_attn_size=-1, sink_size=0), (4, 2), 1, (1000, 500)),
])
def test_check_reference_passes_on_unseen_rollouts(tmp_path, capsys, extra, latent_hw, chunk, raw_steps):
  from numpy_reference import write_rollout_folder
  args = dict(model_type="t2v", patch_size=(1, 2, 2), in_dim=16, out_dim=16, eps=1e-6, qk_norm=True,
              cross_attn_norm=True)
  args.update(extra)
  folder = write_rollout_folder(str(tmp_path / "r"), args, latent_hw=latent_hw, chunks=4, chunk=chunk,
                                raw_steps=raw_steps)
  assert cli.main(["check-reference", folder]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert any(line.startswith("rollout/kv_after_chunk3_k") and "PASS" in line for line in lines)
  assert any(line.startswith("rollout/call_x0_pred") and "PASS" in line for line in lines)
