"""The device mesh (axes data, fsdp, tensor) and the one table of parameter partition rules.

    data    samples (prompts x seeds) of a batch; parameters replicated
    fsdp    parameters' input width split (gathered for use); samples split too
    tensor  heads of the attention projections and the FFN width split

Parameters are named by their Flax paths (`blocks.self_attn.q.kernel`, ...); the 30 blocks are stacked on a leading
layer axis that is never split. A dimension an axis does not divide is left whole (replicated over that axis), except
the heads: splitting 12 heads over 8 devices would cut heads in half, so it is refused with the sizes that work.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

from jax.sharding import PartitionSpec as P

from rf_jax.config import MESH_AXES, ModelConfig

__all__ = ["MESH_AXES", "MeshConfig", "PARAM_RULES", "param_spec", "param_specs"]

# Flax path (regex, full match) -> the mesh axis of each dimension (None = whole).
PARAM_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"blocks\.(self|cross)_attn\.[qkv]\.kernel", (None, "fsdp", "tensor")),  # [L, D, N*H]
    (r"blocks\.(self|cross)_attn\.[qkv]\.bias", (None, "tensor")),
    (r"blocks\.(self|cross)_attn\.norm_[qk]\.weight", (None, "tensor")),  # over the full width, like q/k
    (r"blocks\.(self|cross)_attn\.o\.kernel", (None, "tensor", "fsdp")),  # [L, N*H, D]
    (r"blocks\.ffn\.layers\.0\.kernel", (None, "fsdp", "tensor")),  # [L, D, ffn]
    (r"blocks\.ffn\.layers\.0\.bias", (None, "tensor")),
    (r"blocks\.ffn\.layers\.2\.kernel", (None, "tensor", "fsdp")),  # [L, ffn, D]
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  data: int = 1
  fsdp: int = 1
  tensor: int = 1

  @classmethod
  def parse(cls, spec: str) -> "MeshConfig":
    """'data=2,tensor=4' -> MeshConfig(data=2, tensor=4); unnamed axes are 1."""
    sizes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
      name, eq, value = part.partition("=")
      name = name.strip()
      if not eq or name not in MESH_AXES:
        raise ValueError(f"--mesh {spec!r}: {part!r} is not AXIS=SIZE with AXIS one of {', '.join(MESH_AXES)}")
      if name in sizes:
        raise ValueError(f"--mesh {spec!r}: axis {name!r} given twice")
      try:
        sizes[name] = int(value)
      except ValueError:
        raise ValueError(f"--mesh {spec!r}: size of {name!r} is {value!r}, not an integer") from None
      if sizes[name] < 1:
        raise ValueError(f"--mesh {spec!r}: size of {name!r} must be >= 1")
    return cls(**sizes)

  @property
  def shape(self) -> dict[str, int]:
    return {a: getattr(self, a) for a in MESH_AXES}

  @property
  def size(self) -> int:
    return self.data * self.fsdp * self.tensor

  def validate(self, config: ModelConfig, batch: int | None = None) -> None:
    """Raises ValueError naming the setting when this mesh cannot run `config` (and `batch` samples)."""
    if config.num_heads % self.tensor:
      ok = [d for d in range(1, config.num_heads + 1) if config.num_heads % d == 0]
      raise ValueError(f"mesh tensor={self.tensor} does not divide the model's {config.num_heads} heads; "
                       f"use tensor in {ok}")
    if batch is not None and batch % (self.data * self.fsdp):
      raise ValueError(f"batch {batch} does not divide over data x fsdp = {self.data * self.fsdp} devices")


def param_spec(path: str, shape: tuple[int, ...], mesh: MeshConfig) -> P:
  """The PartitionSpec of one parameter (dotted Flax path) on `mesh`."""
  for pattern, axes in PARAM_RULES:
    if re.fullmatch(pattern, path):
      if len(axes) != len(shape):
        raise ValueError(f"partition rule {pattern!r} names {len(axes)} dims; parameter {path} has shape {shape}")
      dims = [a if a is not None and getattr(mesh, a) > 1 and n % getattr(mesh, a) == 0 else None
              for a, n in zip(axes, shape)]
      while dims and dims[-1] is None:
        dims.pop()
      return P(*dims)
  return P()


def param_specs(config: ModelConfig, mesh: MeshConfig) -> Mapping[str, P]:
  """Every parameter's PartitionSpec (dotted path -> spec), from the shapes alone (nothing is allocated)."""
  from rf_jax.registry import param_shapes
  mesh.validate(config)
  return {".".join(map(str, path)): param_spec(".".join(map(str, path)), shape, mesh)
          for path, shape in param_shapes(config).items()}
