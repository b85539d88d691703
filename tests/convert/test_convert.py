import json
import os
import pickle
import tracemalloc
import zipfile

import numpy as np
import pytest
from safetensors.numpy import save_file

from numpy_reference import random_state_dict
from rf_jax.config import ModelConfig
from rf_jax.convert import ConversionError, UnsafePickleError, convert_checkpoint, convert_tensors, open_source

ASSETS = os.path.join(os.path.dirname(__file__), "..", "assets")
MICRO_ARGS = dict(dim=16, ffn_dim=32, num_heads=2, num_layers=2, in_dim=16, out_dim=16, freq_dim=8, text_dim=8,
                  text_len=4, patch_size=(1, 2, 2), eps=1e-6)
MICRO = ModelConfig(**MICRO_ARGS)


def _write(tmp_path, sd, name="model.safetensors"):
  path = str(tmp_path / name)
  save_file(sd, path)
  return path


def test_converts_and_places_every_tensor(tmp_path):
  sd = random_state_dict(MICRO_ARGS, seed=0)
  tensors, _ = open_source(_write(tmp_path, sd))
  params = convert_tensors(tensors, MICRO)
  np.testing.assert_array_equal(params[("blocks", "self_attn", "q", "kernel")][1], sd["blocks.1.self_attn.q.weight"].T)
  np.testing.assert_array_equal(params[("blocks", "ffn", "layers", 2, "bias")][0], sd["blocks.0.ffn.2.bias"])
  np.testing.assert_array_equal(params[("patch_embedding", "kernel")][0, 1, 0, :, 3],
                                sd["patch_embedding.weight"][3, :, 0, 1, 0])
  np.testing.assert_array_equal(params[("blocks", "modulation")][1], sd["blocks.1.modulation"])


def test_strictness_names_every_problem(tmp_path):
  sd = random_state_dict(MICRO_ARGS, seed=0)
  del sd["blocks.1.cross_attn.norm_k.weight"]  # missing
  del sd["head.head.bias"]  # missing
  sd["blocks.0.img_emb.proj.weight"] = np.zeros((2, 2), np.float32)  # extra
  sd["blocks.2.ffn.0.bias"] = np.zeros((32,), np.float32)  # layer past num_layers
  sd["blocks.0.self_attn.o.weight"] = np.zeros((16, 15), np.float32)  # misshaped
  with pytest.raises(ConversionError) as e:
    convert_tensors(open_source(_write(tmp_path, sd))[0], MICRO)
  msg = str(e.value)
  for needle in ["blocks.cross_attn.norm_k.weight (layers 1)", "head.head.bias", "blocks.0.img_emb.proj.weight",
                 "blocks.2.ffn.0.bias (layer 2 >= num_layers 2)", "blocks.0.self_attn.o.weight: source shape (16, 15)",
                 "2 source keys no parameter uses", "3 parameters no source key fills", "blocks.self_attn.o.kernel (layers 0)", "1 shape mismatches"]:
    assert needle in msg, (needle, msg)


def test_wrong_config_is_a_clear_error(tmp_path):
  sd = random_state_dict(MICRO_ARGS, seed=0)
  with pytest.raises(ConversionError, match="shape mismatches"):
    convert_tensors(open_source(_write(tmp_path, sd))[0], ModelConfig(**{**MICRO_ARGS, "dim": 32}))


def test_truncated_safetensors_is_refused(tmp_path):
  path = _write(tmp_path, random_state_dict(MICRO_ARGS, seed=0))
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) - 100])
  with pytest.raises(ValueError, match="truncated"):
    open_source(path)


def test_sharded_safetensors_with_index(tmp_path):
  sd = random_state_dict(MICRO_ARGS, seed=1)
  keys = sorted(sd)
  shards = {"a.safetensors": keys[::2], "b.safetensors": keys[1::2]}
  weight_map = {}
  for shard, ks in shards.items():
    save_file({k: sd[k] for k in ks}, str(tmp_path / shard))
    weight_map.update({k: shard for k in ks})
  (tmp_path / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  tensors, info = open_source(str(tmp_path))
  assert [t.shard for t in tensors] == sorted(t.shard for t in tensors)  # shard by shard
  params = convert_tensors(tensors, MICRO)
  np.testing.assert_array_equal(params[("head", "modulation")], sd["head.modulation"])
  os.remove(tmp_path / "b.safetensors")
  with pytest.raises(ValueError, match="shard 'b.safetensors' named by the index is missing"):
    open_source(str(tmp_path))


def test_real_torch_checkpoint_self_forcing_layout():
  """A file written by real torch.save: {'generator': bf16, 'generator_ema': f32}, 'model.' prefix, a
  non-contiguous tensor (tests/assets/make_torch_assets.py)."""
  ref = np.load(os.path.join(ASSETS, "self_forcing_tiny.npz"))
  path = os.path.join(ASSETS, "self_forcing_tiny.pt")
  for entry, dtype in (("generator_ema", "float32"), ("generator", "bfloat16")):
    tensors, info = open_source(path, weights=entry)
    assert info["weights"] == entry and info["stripped_prefix"] == "model."
    assert {str(t.dtype) for t in tensors} == {dtype}
    for t in tensors:
      np.testing.assert_array_equal(t.load().astype(np.float32), ref[f"{entry}/model.{t.key}"])
  assert open_source(path)[1]["weights"] == "generator_ema"  # the default, as demo.py and Relax Forcing use
  params = convert_tensors(open_source(path)[0], MICRO)
  np.testing.assert_array_equal(params[("blocks", "ffn", "layers", 0, "kernel")][0],
                                ref["generator_ema/model.blocks.0.ffn.0.weight"].T)
  with pytest.raises(ValueError, match="has no entry 'critic'"):
    open_source(path, weights="critic")


class _Payload:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_code_execution_payload_is_refused(tmp_path):
  """A .pt whose pickle would run `os.system` when loaded with plain pickle: refused, and nothing runs."""
  marker = tmp_path / "pwned"
  payload = pickle.dumps({"generator_ema": {"w": _Payload(marker)}}, protocol=2)
  path = tmp_path / "evil.pt"
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("evil/data.pkl", payload)
    zf.writestr("evil/version", "3\n")
  with pytest.raises(UnsafePickleError, match=r"refusing to load global '(posix|os)\.system'"):
    open_source(str(path))
  assert not marker.exists()
  pickle.loads(payload)  # the same bytes through plain pickle do run code: the test above is meaningful
  assert marker.exists()


def test_legacy_and_garbage_pt_files_are_refused(tmp_path):
  legacy = tmp_path / "legacy.pt"
  legacy.write_bytes(pickle.dumps({"a": 1}, protocol=2))
  with pytest.raises(ValueError, match="legacy"):
    open_source(str(legacy))
  truncated = tmp_path / "trunc.pt"
  truncated.write_bytes(open(os.path.join(ASSETS, "self_forcing_tiny.pt"), "rb").read()[:5000])
  with pytest.raises(ValueError, match="truncated|not a PyTorch zip"):
    open_source(str(truncated))


def test_conversion_memory_is_bounded_by_one_tensor(tmp_path):
  """Converting a sharded checkpoint never holds the model in memory: peak Python/numpy allocations stay well
  below the model's size (parameters are staged in memory-mapped files)."""
  args = dict(MICRO_ARGS, dim=256, ffn_dim=512, num_heads=4, num_layers=12, text_dim=64)
  config = ModelConfig(**args)
  sd = random_state_dict(args, seed=2)
  total = sum(v.nbytes for v in sd.values())
  layer_keys = lambda i: [k for k in sd if k.startswith(f"blocks.{i}.")]  # noqa: E731
  weight_map = {}
  for i in range(args["num_layers"]):
    save_file({k: sd[k] for k in layer_keys(i)}, str(tmp_path / f"shard{i}.safetensors"))
    weight_map.update({k: f"shard{i}.safetensors" for k in layer_keys(i)})
  rest = {k: v for k, v in sd.items() if not k.startswith("blocks.")}
  save_file(rest, str(tmp_path / "rest.safetensors"))
  weight_map.update({k: "rest.safetensors" for k in rest})
  (tmp_path / "m.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
  del sd, rest
  src = str(tmp_path / "m.safetensors.index.json")
  convert_checkpoint(src, str(tmp_path / "warm"), config=config, progress=False)  # imports and trace caches
  tracemalloc.start()
  convert_checkpoint(src, str(tmp_path / "ckpt"), config=config, progress=False)
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  largest = 256 * 6 * 256 * 4  # time_projection weight, bytes
  assert total > 16 * largest
  assert peak < 4 * largest, (peak, largest, total)
