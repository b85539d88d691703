"""Kernels under shard_map on a fake 8-device CPU mesh (batch and heads split), in a fresh process."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, {cases!r})
    from attention_cases import make_problem, rel_err
    from rf_jax.ops.sharded import sharded_attention
    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((2, 1, 4), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Explicit,) * 3)
    q, k, v, mem = make_problem(batch=4, heads=4, frame_tokens=16, head_dim=64, seed=2)
    fn = sharded_attention(mesh, impl={impl!r})
    out = jax.jit(fn)(*fn.place(q, k, v, mem))
    assert len(out.sharding.device_set) == 8, out.sharding
    err = rel_err(out, q, k, v, mem, None)
    assert err <= 1e-5, err
    print("ok", err)
""")


@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_tpu", "reference"])
def test_kernels_under_shard_map_on_8_fake_devices(impl):
  here = os.path.dirname(os.path.abspath(__file__))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  code = SCRIPT.format(cases=os.path.join(here, "kernels"), impl=impl)
  run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  assert run.stdout.startswith("ok")


def test_indivisible_heads_are_named():
  import jax
  from rf_jax.ops.sharded import sharded_attention
  mesh = jax.make_mesh((1,), ("model",))
  with pytest.raises(ValueError, match="no axis named 'data'"):
    sharded_attention(mesh)
