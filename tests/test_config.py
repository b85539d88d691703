import json

import pytest

from rf_jax import config as cfg
from rf_jax.registry import count_params, param_shapes


def test_presets_match_the_spec():
  c = cfg.get_preset("wan2.1-t2v-1.3b")
  assert (c.dim, c.ffn_dim, c.num_heads, c.num_layers, c.text_dim, c.freq_dim, c.text_len) == (
      1536, 8960, 12, 30, 4096, 256, 512)
  assert c.patch_size == (1, 2, 2) and c.eps == 1e-6 and c.head_dim == 128
  assert c.rope_pairs() == (22, 21, 21)
  big = cfg.get_preset("wan2.1-t2v-14b")
  assert (big.dim, big.ffn_dim, big.num_heads, big.num_layers) == (5120, 13824, 40, 40)
  assert cfg.TINY.num_heads % 4 == 0


def test_1_3b_parameter_count_through_eval_shape():
  shapes = param_shapes(cfg.WAN21_T2V_1_3B)  # nnx.eval_shape: nothing allocated
  assert count_params(cfg.WAN21_T2V_1_3B) == 1_418_996_800
  assert cfg.WAN21_T2V_1_3B.num_params() == 1_418_996_800
  assert shapes[("blocks", "self_attn", "q", "kernel")] == (30, 1536, 1536)
  assert shapes[("patch_embedding", "kernel")] == (1, 2, 2, 16, 1536)


def test_14b_shapes_through_eval_shape():
  c = cfg.WAN21_T2V_14B
  assert count_params(c) == c.num_params()
  shapes = param_shapes(c)
  assert shapes[("blocks", "ffn", "layers", 0, "kernel")] == (40, 5120, 13824)
  assert shapes[("head", "head", "kernel")] == (5120, 64)


@pytest.mark.parametrize("kwargs, match", [
    (dict(dim=100, num_heads=3), "not divisible"),
    (dict(dim=96, num_heads=32), "must be even"),
    (dict(num_layers=0), "num_layers must be a positive integer"),
    (dict(eps=0.0), "eps"),
    (dict(patch_size=(1, 2)), "patch_size"),
    (dict(model_type="i2v"), "i2v"),
    (dict(prediction="eps"), "prediction='eps'"),
    (dict(prediction="x0", in_dim=16, out_dim=32), "in_dim == out_dim"),
])
def test_invalid_configs_are_refused_with_a_named_error(kwargs, match):
  base = dict(dim=64, ffn_dim=128, num_heads=4, num_layers=2)
  with pytest.raises(ValueError, match=match):
    cfg.ModelConfig(**{**base, **kwargs})


def test_config_is_frozen_and_round_trips():
  with pytest.raises(Exception):
    cfg.TINY.dim = 3  # type: ignore[misc]
  assert cfg.ModelConfig.from_dict(cfg.TINY.to_dict()) == cfg.TINY
  with pytest.raises(ValueError, match="unknown ModelConfig keys"):
    cfg.ModelConfig.from_dict({**cfg.TINY.to_dict(), "heads": 3})


def test_wan_config_json(tmp_path):
  wan = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 1536, "eps": 1e-06, "ffn_dim": 8960,
         "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 12, "num_layers": 30, "out_dim": 16,
         "text_len": 512}
  p = tmp_path / "config.json"
  p.write_text(json.dumps(wan))
  assert cfg.from_wan_config(p) == cfg.WAN21_T2V_1_3B
  p.write_text(json.dumps({**wan, "num_atention_heads": 12}))
  with pytest.raises(ValueError, match="unexpected keys"):
    cfg.from_wan_config(p)
  with pytest.raises(ValueError, match="no such"):
    cfg.from_wan_config(tmp_path / "missing.json")


def test_shipped_wan_configs_load():
  import os
  root = os.path.join(os.path.dirname(__file__), "..", "configs", "models")
  assert cfg.from_wan_config(os.path.join(root, "wan2.1-t2v-1.3b.json")) == cfg.WAN21_T2V_1_3B
  assert cfg.from_wan_config(os.path.join(root, "wan2.1-t2v-14b.json")) == cfg.WAN21_T2V_14B


def test_constructor_args():
  args = {"model_type": "t2v", "patch_size": [1, 2, 2], "text_len": 16, "in_dim": 16, "dim": 64, "ffn_dim": 128,
          "freq_dim": 32, "text_dim": 32, "out_dim": 16, "num_heads": 4, "num_layers": 2, "local_attn_size": 6,
          "sink_size": 2, "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6}
  c = cfg.from_constructor_args(args)
  assert c.dim == 64 and c.patch_size == (1, 2, 2)
  assert cfg.memory_args_from_constructor_args(args) == (6, 2)
