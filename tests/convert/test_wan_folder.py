"""A whole Wan folder -> a pipeline folder, and prompt -> mp4 from it.

The folder is made here in Wan's layout: a random DiT (Wan config.json + safetensors), the T5 and VAE fixtures'
weights re-saved as the .pth files Wan ships (umT5 in bf16, as `models_t5_umt5-xxl-enc-bf16.pth` is), and a small
tokenizer.json.
"""

import json
import os

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import fixture_dir
from numpy_reference import random_state_dict
from rf_jax import cli
from rf_jax.checkpoint import load_params, stored_dtypes
from rf_jax.convert.wan_folder import T5_FILE, TOKENIZER_DIR, VAE_FILE
from rf_jax.video import probe
from torch_zip import save_state_dict

DIT_ARGS = dict(dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=16, out_dim=16, freq_dim=16, text_dim=64,
                text_len=16, patch_size=(1, 2, 2), eps=1e-6)

def _flat(state):
  return {tuple(p): np.asarray(v.get_value() if hasattr(v, "get_value") else v, np.float32)
          for p, v in __import__("flax").nnx.to_flat_state(state)}


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
  from tokenizers import Tokenizer, models, pre_tokenizers
  root = tmp_path_factory.mktemp("Wan2.1-T2V-micro")
  config = {k: v for k, v in DIT_ARGS.items() if k != "patch_size"} | {"model_type": "t2v"}
  (root / "config.json").write_text(json.dumps(config))
  save_file(random_state_dict(DIT_ARGS, seed=4), str(root / "diffusion_pytorch_model.safetensors"))
  t5 = load_file(os.path.join(fixture_dir("T5"), "model.safetensors"))
  save_state_dict(str(root / T5_FILE), {k: v.astype(ml_dtypes.bfloat16) for k, v in t5.items()})
  save_state_dict(str(root / VAE_FILE), load_file(os.path.join(fixture_dir("VAE"), "model.safetensors")))
  words = ["<pad>", "</s>", "<unk>", "a", "red", "fox", "runs", "in", "snow"]
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  os.makedirs(root / TOKENIZER_DIR)
  tok.save(str(root / TOKENIZER_DIR / "tokenizer.json"))
  return root


@pytest.fixture(scope="module")
def converted(wan_folder, tmp_path_factory):
  out = tmp_path_factory.mktemp("converted") / "pipeline"
  assert cli.main(["convert", str(wan_folder), str(out), "--quiet"]) == 0
  return out


def test_the_whole_folder_converts_in_one_go(wan_folder, converted):
  assert sorted(os.listdir(converted)) == ["dit", "pipeline.json", "tokenizer", "umt5", "vae"]
  t5 = load_file(os.path.join(fixture_dir("T5"), "model.safetensors"))
  _, state = load_params(converted / "umt5", kind="umt5")
  params = _flat(state)
  # the bf16 source is kept as stored (rounded once, by the writer of the .pth), and laid out as [in, out]
  np.testing.assert_array_equal(params[("blocks", "attn", "q", "kernel")][1],
                                t5["blocks.1.attn.q.weight"].astype(ml_dtypes.bfloat16).astype(np.float32).T)
  assert stored_dtypes(converted / "umt5")[("token_embedding", "embedding")] == ml_dtypes.bfloat16
  vae = load_file(os.path.join(fixture_dir("VAE"), "model.safetensors"))
  _, state = load_params(converted / "vae", kind="vae")
  np.testing.assert_array_equal(_flat(state)[("decoder", "head_conv", "bias")], vae["decoder.head.2.bias"])
  _, state = load_params(converted / "dit")
  assert _flat(state)[("text_embedding", "layers", 0, "kernel")].shape == (64, 32)
  manifest = json.loads((converted / "pipeline.json").read_text())
  assert manifest["format"] == "rf_jax.pipeline/1" and manifest["source"]["wan_folder"] == str(wan_folder)


def test_a_prompt_becomes_an_mp4_of_the_right_length(converted, tmp_path, capsys):
  out = tmp_path / "video"
  argv = ["generate", "--checkpoint", str(converted), "--prompt", "a red fox runs in snow", "--frames", "5",
          "--latent-hw", "4", "6", "--text-cache", str(tmp_path / "cache"), "--quiet", "--out", str(out)]
  assert cli.main(argv) == 0
  summary = json.loads((out / "summary.json").read_text())
  info = probe(str(out / "video.mp4"))
  # 5 latent frames -> 1 + 4 * 4 = 17 pixel frames (the last chunk's sixth latent is generated, decoded and cut);
  # 4 x 6 latents -> 32 x 48 pixels
  assert (info["frames"], info["height"], info["width"], info["codec"]) == (17, 32, 48, "h264")
  assert summary["video"]["frames"] == 17 and summary["prompts"] == ["a red fox runs in snow"]
  assert summary["prompts_encoded"] == 1 and np.load(out / "latents.npy").shape == (1, 5, 16, 4, 6)
  # the same prompt again: read from the cache, the encoder is not run
  capsys.readouterr()
  assert cli.main([*argv, "--force", "--no-video"]) == 0
  summary = json.loads((out / "summary.json").read_text())
  assert summary["prompts_encoded"] == 0 and summary["prompts_cached"] == 1 and summary["video"] is None


def test_a_t5_pth_alone_converts_as_the_text_encoder(wan_folder, tmp_path, capsys):
  out = tmp_path / "t5"
  assert cli.main(["convert", str(wan_folder / T5_FILE), str(out), "--quiet"]) == 0
  assert json.loads(capsys.readouterr().out)["kind"] == "umt5"
  assert cli.main(["inspect", str(out)]) == 0
  assert "umT5 text encoder" in capsys.readouterr().out
  # a text-encoder checkpoint where a DiT is needed is named as such
  assert cli.main(["generate", "--checkpoint", str(out), "--out", str(tmp_path / "v"), "--quiet"]) == 2
  assert "is a umT5 text encoder checkpoint" in capsys.readouterr().err


def test_missing_parts_and_mismatched_models_fail_before_writing(wan_folder, tmp_path, capsys):
  broken = tmp_path / "broken"
  os.makedirs(broken)
  for name in ("config.json", "diffusion_pytorch_model.safetensors", T5_FILE):
    os.symlink(wan_folder / name, broken / name)
  assert cli.main(["convert", str(broken), str(tmp_path / "out"), "--quiet"]) == 2
  err = capsys.readouterr().err
  assert VAE_FILE in err and "tokenizer.json" in err and not (tmp_path / "out").exists()

  os.symlink(wan_folder / VAE_FILE, broken / VAE_FILE)
  os.symlink(wan_folder / "google", broken / "google")
  os.remove(broken / "config.json")
  (broken / "config.json").write_text(json.dumps({**json.loads((wan_folder / "config.json").read_text()),
                                                  "text_dim": 48}))
  assert cli.main(["convert", str(broken), str(tmp_path / "out"), "--quiet"]) == 2
  assert "text encoder's width 64 is not the DiT's text_dim 48" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()

  # a tokenizer with more ids than the encoder's table (259 > 256) would index past it
  from rf_jax.text.tokenizer import byte_tokenizer
  os.remove(broken / "config.json")
  os.symlink(wan_folder / "config.json", broken / "config.json")
  os.remove(broken / "google")
  byte_tokenizer().save(str(broken / TOKENIZER_DIR))
  assert cli.main(["convert", str(broken), str(tmp_path / "out"), "--quiet"]) == 2
  assert "has 259 tokens; the text encoder's table only 256" in capsys.readouterr().err
  assert not (tmp_path / "out").exists()
