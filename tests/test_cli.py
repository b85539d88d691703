import json
import os

import numpy as np

from rf_jax import cli

ASSETS = os.path.join(os.path.dirname(__file__), "assets")


def test_inspect_preset_counts_1_3b_without_allocating(capsys):
  assert cli.main(["inspect", "--preset", "wan2.1-t2v-1.3b"]) == 0
  out = capsys.readouterr().out
  assert "parameters: 1,418,996,800" in out
  assert '"num_heads": 12' in out


def test_convert_then_inspect_a_self_forcing_pt(tmp_path, capsys):
  cfg = tmp_path / "micro.json"
  cfg.write_text(json.dumps({"constructor_args": dict(dim=16, ffn_dim=32, num_heads=2, num_layers=2, in_dim=16,
                                                      out_dim=16, freq_dim=8, text_dim=8, text_len=4,
                                                      patch_size=[1, 2, 2], eps=1e-6)}))
  out = tmp_path / "ckpt"
  assert cli.main(["convert", os.path.join(ASSETS, "self_forcing_tiny.pt"), str(out), "--config", str(cfg),
                   "--dtype", "bfloat16", "--quiet"]) == 0
  meta = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert meta["weights"] == "generator_ema" and meta["stripped_prefix"] == "model."
  assert cli.main(["inspect", str(out)]) == 0
  text = capsys.readouterr().out
  assert "bfloat16" in text and "float32" in text  # kernels bf16, biases/norms/modulation float32
  assert cli.main(["convert", os.path.join(ASSETS, "self_forcing_tiny.pt"), str(out), "--config", str(cfg)]) == 2
  assert "already exists" in capsys.readouterr().err


def test_convert_with_the_wrong_config_fails_clearly(tmp_path, capsys):
  code = cli.main(["convert", os.path.join(ASSETS, "self_forcing_tiny.pt"), str(tmp_path / "x"), "--config", "tiny",
                   "--quiet"])
  assert code == 2
  err = capsys.readouterr().err
  assert "shape mismatches" in err and not (tmp_path / "x").exists()


def test_forward_main_job_writes_outputs(tmp_path, capsys):
  out = tmp_path / "fwd"
  assert cli.main(["forward", "--preset", "tiny", "--frames", "3", "--latent-hw", "4", "4", "--out", str(out)]) == 0
  flow = np.load(out / "flow.npy")
  summary = json.loads((out / "summary.json").read_text())
  assert flow.shape == (1, 3, 4, 4, 16) and np.isfinite(flow).all()
  assert summary["frames"] == 3
  assert cli.main(["forward", "--preset", "tiny", "--frames", "3", "--latent-hw", "4", "4", "--out", str(out)]) == 2


def test_every_policy_setting_has_a_generate_flag():
  import argparse
  import dataclasses
  from rf_jax.memory import MODES, POLICIES, SETTINGS, public_name
  classes = {*POLICIES.values(), *(c for modes in MODES.values() for c in modes.values())}
  fields = {f.name for c in classes for f in dataclasses.fields(c)} | {"mode"}
  assert fields == set(SETTINGS)
  commands = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
  flags = {a.dest: a.option_strings for a in commands["generate"]._actions}
  for field in fields:
    assert flags[field] == ["--" + public_name(field).replace("_", "-")], field
