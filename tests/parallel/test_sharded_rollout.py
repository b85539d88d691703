"""Sharded rollouts on 8 fake CPU devices equal the single-device rollout, for every memory policy; the CLI's
`--mesh` and a two-process (multi-host) run give the single-device latents."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rf_jax import cli

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from flax import nnx
    from rf_jax.config import get_preset
    from rf_jax.memory import policy_from_dict
    from rf_jax.model import CausalWanDiT
    from rf_jax.parallel import MeshConfig, make_mesh
    from rf_jax.sampling import Rollout, Sampler
    assert jax.device_count() == 8, jax.devices()
    policy = policy_from_dict(json.loads(sys.argv[1]))
    model = CausalWanDiT(get_preset("tiny"), rngs=nnx.Rngs(0))
    context = np.asarray(jax.random.normal(jax.random.key(1), (4, 32, 64)))
    out = {{}}
    for name, mesh in (("single", None), ("sharded", make_mesh(MeshConfig.parse({mesh!r})))):
      r = Rollout(model, policy, Sampler.from_steps(), batch=4, latent_hw=(8, 8), frames=12, mesh=mesh)
      out[name], traces = r.run(context, key=jax.random.key(0))
      assert r.compile_count == 1, r.compile_count
      leaves = jax.tree.leaves(r.final_state)
    kv = max(leaves, key=lambda a: a.ndim)  # the memory's keys [L, B, R, Q, N, H]
    spec = tuple(kv.sharding.spec) + (None,) * (6 - len(kv.sharding.spec))
    err = float(np.abs(out["single"] - out["sharded"]).max())
    print(json.dumps({{"err": err, "scale": float(np.abs(out["single"]).max()), "kv_spec": [str(s) for s in spec],
                      "kv_devices": len(kv.sharding.device_set)}}))
""")

POLICIES = {
    "window_sink": {"policy": "window", "window_frames": 9, "sink_frames": 3},
    "window_relocated": {"policy": "window", "window_frames": 9, "sink_frames": 3, "positions": "relocated_sink"},
    "relax": {"policy": "relax", "reservoir_frames": 12},
    "slow_fast": {"policy": "slow_fast"},
    "slow_fast_upstream": {"policy": "slow_fast", "mode": "upstream"},
}


def fake_devices(n):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_sharded_rollout_equals_single_device(name):
  code = SCRIPT.format(mesh="data=2,fsdp=2,tensor=2" if name == "relax" else "data=2,tensor=4")
  run = subprocess.run([sys.executable, "-c", code, json.dumps(POLICIES[name])], env=fake_devices(8),
                       capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  res = json.loads(run.stdout.strip().splitlines()[-1])
  assert res["err"] <= 1e-5 * max(1.0, res["scale"]), res
  assert res["kv_devices"] == 8
  batch_axis, heads_axis = res["kv_spec"][1], res["kv_spec"][2]  # [L, B, N, R, Q, H]
  assert "data" in batch_axis and heads_axis == "tensor", res  # samples over data (x fsdp), heads over tensor


GENERATE = ["generate", "--preset", "tiny", "--batch", "2", "--frames", "9", "--quiet", "--no-video"]


def _single_device_run(tmp_path):
  out = tmp_path / "single"
  assert cli.main([*GENERATE, "--out", str(out)]) == 0
  return np.load(out / "latents.npy"), json.loads((out / "memory_trace.json").read_text())


def _selections(trace):
  return [(c.get("history"), c["memory_frames"]) for c in trace["chunks"]]


def test_cli_mesh_gives_the_single_device_latents(tmp_path):
  """The issue's check, `rf-jax generate --batch 2 --mesh data=2,tensor=4` on 8 fake devices, from a checkpoint
  (orbax restores it straight onto the parameter shardings)."""
  from flax import nnx
  from rf_jax.checkpoint import save_checkpoint
  from rf_jax.config import get_preset
  from rf_jax.model import CausalWanDiT
  ckpt = tmp_path / "ckpt"
  save_checkpoint(ckpt, get_preset("tiny"), nnx.state(CausalWanDiT(get_preset("tiny"), rngs=nnx.Rngs(7)), nnx.Param))
  argv = [a for a in GENERATE if a not in ("--preset", "tiny")] + ["--checkpoint", str(ckpt), "--latent-hw", "8", "8"]
  assert cli.main([*argv, "--out", str(tmp_path / "single")]) == 0
  single = np.load(tmp_path / "single" / "latents.npy")
  trace = json.loads((tmp_path / "single" / "memory_trace.json").read_text())
  out = tmp_path / "mesh"
  run = subprocess.run([sys.executable, "-m", "rf_jax.cli", *argv, "--mesh", "data=2,tensor=4",
                        "--out", str(out)], env=fake_devices(8), capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, run.stderr[-3000:]
  assert np.abs(np.load(out / "latents.npy") - single).max() <= 1e-5 * max(1.0, np.abs(single).max())
  summary = json.loads((out / "summary.json").read_text())
  assert summary["mesh"] == "data=2,fsdp=1,tensor=4" and summary["devices"] == 8
  assert _selections(json.loads((out / "memory_trace.json").read_text())) == _selections(trace)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
  """Two processes of 4 fake devices each (jax.distributed over gloo) run one data=2,tensor=4 mesh; each writes
  only its own sample's rows of the latents."""
  single, trace = _single_device_run(tmp_path)
  out = tmp_path / "two"
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, "-m", "rf_jax.cli", *GENERATE, "--mesh", "data=2,tensor=4",
                             "--out", str(out), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                             "--process-id", str(i)], env=fake_devices(4), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  logs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, logs):
    assert p.returncode == 0, err[-3000:]
  # gloo's own connection messages share stdout (and may interleave); reports are the JSON lines.
  said = [[line for line in log.splitlines() if line.startswith("{")] for log, _ in logs]
  assert json.loads(said[0][-1])["out"] == str(out)
  assert said[1] == []  # only process 0 reports
  assert np.abs(np.load(out / "latents.npy") - single).max() <= 1e-5 * max(1.0, np.abs(single).max())
  summary = json.loads((out / "summary.json").read_text())
  assert summary["processes"] == 2 and summary["devices"] == 8
  assert _selections(json.loads((out / "memory_trace.json").read_text())) == _selections(trace)
  assert not (tmp_path / "two.partial").exists()


SWEEP = textwrap.dedent("""
    from rf_jax.memory import RelaxPolicy
    from rf_jax.sweep import Sweep, grid
    SWEEP = Sweep(policies=grid(RelaxPolicy(reservoir_frames=12), lam=[0.0, 8.0]), prompts=("random:1",),
                  seeds=(1, 2, 3), frames=12, batch=2)
""")


def test_two_process_sweep_equals_single_process(tmp_path):
  """A sweep over two processes (mesh data=2,tensor=4; batches padded: 3 samples in batches of 2) writes the
  single-process store: each process its own samples, process 0 the markers and the table."""
  import tensorstore as ts
  from rf_jax.sweep import load_sweep, run_sweep
  conf = tmp_path / "sweep.py"
  conf.write_text(SWEEP)
  run_sweep(load_sweep(str(conf)), str(tmp_path / "single"), progress=False)
  port = _free_port()
  out = tmp_path / "two"
  procs = [subprocess.Popen([sys.executable, "-m", "rf_jax.cli", "sweep", str(conf), "--out", str(out), "--quiet",
                             "--mesh", "data=2,tensor=4", "--coordinator", f"127.0.0.1:{port}",
                             "--num-processes", "2", "--process-id", str(i)], env=fake_devices(4),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=900)
    assert p.returncode == 0, err[-3000:]

  def read(root, name):
    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(root / "store.zarr" / name)}}
    return ts.open(spec).result().read().result()

  single = read(tmp_path / "single", "latents")
  assert np.isfinite(single).all()
  assert np.abs(read(out, "latents") - single).max() <= 1e-5 * max(1.0, np.abs(single).max())
  for name in ("motion_energy", "drift"):
    np.testing.assert_allclose(read(out, f"metrics/{name}"), read(tmp_path / "single", f"metrics/{name}"),
                               rtol=1e-4)
  assert sorted(os.listdir(out / "done")) == sorted(os.listdir(tmp_path / "single" / "done"))
  rows = (out / "results.csv").read_text().splitlines()
  assert len(rows) == 1 + 6
