"""Mesh flags and the parameter partition rules (a snapshot for the 1.3B preset)."""

import pytest
from jax.sharding import PartitionSpec as P

from rf_jax.config import get_preset
from rf_jax.parallel import MeshConfig, param_specs


def test_parse_and_errors():
  assert MeshConfig.parse("data=2,tensor=4") == MeshConfig(data=2, fsdp=1, tensor=4)
  assert MeshConfig.parse("") == MeshConfig() and MeshConfig.parse("fsdp=8").size == 8
  for bad, msg in (("model=2", "AXIS=SIZE"), ("data", "AXIS=SIZE"), ("data=x", "not an integer"),
                   ("data=0", ">= 1"), ("data=2,data=2", "given twice")):
    with pytest.raises(ValueError, match=msg):
      MeshConfig.parse(bad)


def test_twelve_heads_over_eight_is_refused_with_the_sizes_that_work():
  with pytest.raises(ValueError, match=r"tensor=8 does not divide the model's 12 heads; use tensor in "
                                       r"\[1, 2, 3, 4, 6, 12\]"):
    param_specs(get_preset("wan2.1-t2v-1.3b"), MeshConfig(tensor=8))
  with pytest.raises(ValueError, match="batch 3 does not divide"):
    MeshConfig(data=2).validate(get_preset("tiny"), batch=3)


def test_partition_snapshot_1_3b():
  specs = param_specs(get_preset("wan2.1-t2v-1.3b"), MeshConfig(data=2, fsdp=2, tensor=4))
  expected = {
      "blocks.self_attn.q.kernel": P(None, "fsdp", "tensor"),
      "blocks.self_attn.k.bias": P(None, "tensor"),
      "blocks.self_attn.norm_q.weight": P(None, "tensor"),
      "blocks.self_attn.o.kernel": P(None, "tensor", "fsdp"),
      "blocks.self_attn.o.bias": P(),
      "blocks.cross_attn.v.kernel": P(None, "fsdp", "tensor"),
      "blocks.cross_attn.o.kernel": P(None, "tensor", "fsdp"),
      "blocks.ffn.layers.0.kernel": P(None, "fsdp", "tensor"),
      "blocks.ffn.layers.0.bias": P(None, "tensor"),
      "blocks.ffn.layers.2.kernel": P(None, "tensor", "fsdp"),
      "blocks.ffn.layers.2.bias": P(),
      "blocks.modulation": P(),
      "blocks.norm3.weight": P(),
      "head.head.kernel": P(),
      "patch_embedding.kernel": P(),
      "text_embedding.layers.0.kernel": P(),
      "time_projection.layers.1.kernel": P(),
  }
  assert len(specs) == 42
  for path, spec in expected.items():
    assert specs[path] == spec, path
  # nothing outside the blocks' projections is split
  assert all(spec == P() for path, spec in specs.items() if not path.startswith("blocks.") or "norm3" in path)


def test_a_width_an_axis_does_not_divide_stays_whole():
  cfg = get_preset("wan2.1-t2v-1.3b")  # width 1536 = 3 * 512 divides by 3; ffn 8960 = 2^8 * 35 does not
  specs = param_specs(cfg, MeshConfig(fsdp=3, tensor=3))
  assert specs["blocks.self_attn.q.kernel"] == P(None, "fsdp", "tensor")  # 1536 = 3 * 512
  assert specs["blocks.ffn.layers.0.kernel"] == P(None, "fsdp")  # 8960 is not a multiple of 3: whole
  assert specs["blocks.ffn.layers.2.kernel"] == P(None, None, "fsdp")
