"""Bytes per device of the DiT's parameters, the memory reservoir and the prompt's keys/values, per mesh.

Shapes come from `jax.eval_shape` (nothing is allocated), splits from the package's own partition rules
(`rf_jax.parallel.param_spec`) and memory-state specs (`state_specs`), so the table is what `--mesh` does.
Not counted: activations and temporaries of a chunk step (they grow with the chunk, not the video).

    python scripts/memory_plan.py                       # JSON lines: 1.3B and 14B, 120-frame Relax reservoir
    python scripts/memory_plan.py --markdown            # the README table
"""

from __future__ import annotations

import argparse
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh

from rf_jax.registry import param_shapes
from rf_jax.config import get_preset
from rf_jax.memory import RelaxPolicy
from rf_jax.memory.reservoir import Geometry
from rf_jax.parallel import MESH_AXES, MeshConfig, param_spec, state_specs

MESHES = {
    "wan2.1-t2v-1.3b": ["", "tensor=2", "tensor=4", "tensor=6", "fsdp=8", "data=8", "data=4,tensor=2",
                        "data=16,fsdp=2,tensor=4"],
    "wan2.1-t2v-14b": ["", "tensor=4", "tensor=8", "fsdp=8", "fsdp=2,tensor=4", "data=2,tensor=4",
                       "data=8,tensor=8", "data=16,fsdp=2,tensor=8"],
}


def split(spec, mesh: MeshConfig) -> int:
  parts = 1
  for dim in spec:
    for axis in (dim if isinstance(dim, tuple) else (dim,)):
      if axis is not None:
        parts *= getattr(mesh, axis)
  return parts


def plan(preset: str, mesh_flag: str, *, reservoir_frames: int, latent_hw, chunk_frames: int,
         param_bytes: int, kv_dtype) -> dict:
  cfg = get_preset(preset)
  mesh = MeshConfig.parse(mesh_flag)
  mesh.validate(cfg)
  batch = mesh.data * mesh.fsdp  # one sample per data shard
  params = sum(math.prod(s) * param_bytes / split(param_spec(".".join(map(str, p)), s, mesh), mesh)
               for p, s in param_shapes(cfg).items())
  q = (latent_hw[0] // cfg.patch_size[1]) * (latent_hw[1] // cfg.patch_size[2])
  geom = Geometry(cfg.num_layers, batch, q, cfg.num_heads, cfg.head_dim, chunk_frames, 240, kv_dtype)
  policy = RelaxPolicy(reservoir_frames=reservoir_frames)
  shapes = jax.eval_shape(lambda: policy.init(geom))
  abstract = AbstractMesh(tuple(getattr(mesh, a) for a in MESH_AXES), MESH_AXES)
  specs = state_specs(policy.init, geom, abstract)
  reservoir = sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize / split(s, mesh)
                  for a, s in zip(jax.tree.leaves(shapes), jax.tree.leaves(specs, is_leaf=lambda x: isinstance(
                      x, jax.sharding.PartitionSpec))))
  # Cross-attention keys and values of the prompt, [L, B, text_len, N, H] x 2: one sample per device (split
  # over data x fsdp), heads split over tensor.
  text = 2 * cfg.num_layers * cfg.text_len * cfg.dim * np.dtype(kv_dtype).itemsize / mesh.tensor
  gib = 2.0 ** 30
  return {"preset": preset, "mesh": mesh_flag or "1 device", "devices": mesh.size, "samples": batch,
          "reservoir_slots": policy.capacity(chunk_frames), "frame_tokens": q,
          "params_gib": round(params / gib, 3), "reservoir_gib": round(reservoir / gib, 3),
          "text_kv_gib": round(text / gib, 3), "total_gib": round((params + reservoir + text) / gib, 3)}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--reservoir-frames", type=int, default=120)
  ap.add_argument("--latent-hw", type=int, nargs=2, default=(60, 104))
  ap.add_argument("--chunk-frames", type=int, default=3)
  ap.add_argument("--param-dtype", default="bfloat16", choices=["bfloat16", "float32"])
  ap.add_argument("--kv-dtype", default="bfloat16", choices=["bfloat16", "float32"])
  ap.add_argument("--markdown", action="store_true")
  args = ap.parse_args()
  rows = [plan(p, m, reservoir_frames=args.reservoir_frames, latent_hw=tuple(args.latent_hw),
               chunk_frames=args.chunk_frames, param_bytes=np.dtype(args.param_dtype).itemsize,
               kv_dtype=jnp.dtype(args.kv_dtype)) for p, ms in MESHES.items() for m in ms]
  if not args.markdown:
    for r in rows:
      print(json.dumps(r))
    return
  print("| model | --mesh | samples | params / device | reservoir / device | prompt K/V / device | total / device |")
  print("|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['preset']} | {r['mesh']} | {r['samples']} | {r['params_gib']:.2f} GiB | {r['reservoir_gib']:.2f} GiB "
          f"| {r['text_kv_gib']:.2f} GiB | {r['total_gib']:.2f} GiB |")


if __name__ == "__main__":
  main()
