"""Every class of bad input and fault a user meets, through the command line: exit status 2, one line naming the
file, key, flag or setting, found before a model loads, and nothing written or lost."""

import json
import os
import zipfile

import numpy as np
import pytest

from rf_jax import cli

ARGS = dict(model_type="t2v", patch_size=[1, 2, 2], text_len=8, in_dim=4, dim=32, ffn_dim=64, freq_dim=16, text_dim=8,
            out_dim=4, num_heads=2, num_layers=2, qk_norm=True, cross_attn_norm=True, eps=1e-6)


def run(capsys, *argv):
  code = cli.main(list(argv))
  err = capsys.readouterr().err.strip()
  return code, err


@pytest.fixture
def no_model(monkeypatch):
  import rf_jax.pipeline as pipeline
  monkeypatch.setattr(pipeline, "load_dit", lambda *a, **k: pytest.fail("a model was loaded"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("inputs")
  np.save(d / "empty.npy", np.zeros((0, 64), np.float32))  # the tiny preset's text_dim
  (d / "syntax.py").write_text("from rf_jax.sweep import Sweep\nSWEEP = Sweep(policies=(\n")
  (d / "keyword.py").write_text("from rf_jax.memory import RelaxPolicy\nfrom rf_jax.sweep import Sweep\n"
                                "SWEEP = Sweep(policies=(RelaxPolicy(lamda=2.0),))\n")
  (d / "string.py").write_text("from rf_jax.memory import RelaxPolicy\nfrom rf_jax.sweep import Sweep\n"
                               "SWEEP = Sweep(policies=(RelaxPolicy(),), prompts='random:0')\n")
  # a .pt whose pickle names os.system: must be refused, never run
  with zipfile.ZipFile(d / "evil.pt", "w") as zf:
    zf.writestr("evil/data.pkl", b"\x80\x02cos\nsystem\nq\x00X\x05\x00\x00\x00touchq\x01\x85q\x02Rq\x03.")
  from numpy_reference import random_state_dict
  from safetensors.numpy import save_file
  sd = random_state_dict({**ARGS, "patch_size": tuple(ARGS["patch_size"])}, 0)
  save_file(sd, str(d / "good.safetensors"))
  sd["blocks.1.ffn.0.weight"] = sd["blocks.1.ffn.0.weight"].astype(np.int32)  # one layer of a stacked parameter
  save_file(sd, str(d / "int32.safetensors"))
  (d / "config.json").write_text(json.dumps({"constructor_args": ARGS}))
  return d


@pytest.mark.parametrize("argv,message", [
    (["--shift", "0"], "shift must be positive"),
    (["--steps", "250", "500", "750", "1000"], "must decrease"),
    (["--memory", "relax", "--lambda", "nan"], "lambda=nan is not a finite number"),
    (["--memory", "slow_fast", "--threshold", "nan"], "threshold=nan is not a finite number"),
    (["--batch", "-2"], "--batch -2 must be >= 1"),
    (["--batch", "0"], "--batch 0 must be >= 1"),
    (["--fps", "0"], "--fps 0 must be >= 1"),
    (["--latent-hw", "0", "0"], "--latent-hw 0 0: must be positive multiples"),
    (["--latent-hw", "7", "8"], "--latent-hw 7 8: must be positive multiples"),
    (["--frames", "0"], "--frames 0 must be positive"),
    (["--memory", "relax", "--sink-frames", "0"], "sink_frames"),
    (["--frames", "100000000", "--latent-hw", "64", "64"], "latents.npy alone would take"),
    (["--text-embeddings", "EMPTY"], "holds no rows"),
    (["--resume"], "no unfinished run"),
    (["--save-every", "-1"], "--save-every -1 must be >= 0"),
])
def test_generate_refuses_before_any_model(tmp_path, capsys, no_model, files, argv, message):
  out = tmp_path / "out"
  argv = [str(files / "empty.npy") if a == "EMPTY" else a for a in argv]
  code, err = run(capsys, "generate", "--preset", "tiny", "--frames", "6", "--quiet", "--out", str(out), *argv)
  assert code == 2 and message in err and len(err.splitlines()) == 1, err
  assert os.listdir(tmp_path) == []  # nothing written, no lock, no partial folder


@pytest.mark.parametrize("argv,message", [
    (["convert", "EVIL", "OUT"], "refusing to load global 'os.system'"),
    (["convert", "MISSING", "OUT"], "no such file or folder"),
    (["convert", "INT32", "OUT", "--config", "CONFIG"], "blocks.1.ffn.0.weight (blocks.ffn.layers.0.kernel): source "
                                                        "dtype int32 is not a floating type"),
    (["inspect", "EVIL"], "is a file; inspect reads rf_jax checkpoint folders"),
    (["sweep", "SYNTAX", "--out", "OUT"], "syntax.py:2: sweep file: syntax error"),
    (["sweep", "KEYWORD", "--out", "OUT"], "keyword.py:3: sweep file: TypeError"),
    (["sweep", "STRING", "--out", "OUT"], "Sweep.prompts='random:0' is one value"),
])
def test_files_and_configs_are_refused_by_name(tmp_path, capsys, files, argv, message):
  names = {"EVIL": files / "evil.pt", "MISSING": tmp_path / "nope.safetensors", "INT32": files / "int32.safetensors",
           "CONFIG": files / "config.json", "SYNTAX": files / "syntax.py", "KEYWORD": files / "keyword.py",
           "STRING": files / "string.py", "OUT": tmp_path / "out"}
  code, err = run(capsys, *[str(names.get(a, a)) for a in argv])
  assert code == 2 and message in err and len(err.splitlines()) == 1, err
  assert not (tmp_path / "out").exists() and not os.path.exists("touch")
  assert [p for p in os.listdir(files) if p.startswith(".rf_jax-staging-") or p.endswith(".lock")] == []


def test_a_damaged_checkpoint_is_named(tmp_path, capsys, files):
  ckpt = tmp_path / "ckpt"
  code, err = run(capsys, "convert", str(files / "good.safetensors"), str(ckpt), "--config", str(files / "config.json"),
                  "--quiet")
  assert code == 0, err
  assert run(capsys, "inspect", str(ckpt), "--verify")[0] == 0
  data = [os.path.join(r, f) for r, _, fs in os.walk(ckpt / "params") for f in fs if "/d/" in os.path.join(r, f)]
  assert data, list(os.walk(ckpt / "params"))
  for path in data:  # the data files go (orbax keeps copies: deleting only some of them may lose nothing)
    os.remove(path)
  capsys.readouterr()
  code = cli.main(["inspect", str(ckpt)])
  got = capsys.readouterr()
  # metadata alone may still read (then it says that it is only the metadata), or already fail, by name
  assert (code == 0 and "--verify" in got.out) or (code == 2 and "damaged or incomplete" in got.err), got
  code, err = run(capsys, "inspect", str(ckpt), "--verify")
  assert code == 2 and "damaged or incomplete" in err and len(err.splitlines()) == 1, err
  code, err = run(capsys, "generate", "--checkpoint", str(ckpt), "--frames", "3", "--latent-hw", "4", "4", "--quiet",
                  "--out", str(tmp_path / "g"))
  assert code == 2 and "damaged or incomplete" in err and not (tmp_path / "g").exists(), err


def test_an_internal_error_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
  import rf_jax.pipeline as pipeline

  def boom(*a, **k):
    raise RuntimeError("something broke\nsecond line")
  monkeypatch.setattr(pipeline, "inspect_parameters", boom)
  assert cli.main(["inspect", "--preset", "tiny"]) == 1
  err = capsys.readouterr().err
  assert err.strip() == ("rf-jax inspect: internal error: RuntimeError: something broke second line (run with --debug "
                         "for the traceback)")
  with pytest.raises(RuntimeError):
    cli.main(["--debug", "inspect", "--preset", "tiny"])


@pytest.mark.parametrize("argv,message", [
    (["--batch", "0"], "--batch 0 must be >= 1"),
    (["--frames", "-3"], "--frames -3 must be >= 1"),
    (["--timestep", "nan"], "--timestep nan must be in [0, 1000]"),
    (["--latent-hw", "5", "8"], "--latent-hw 5 8: must be positive multiples"),
])
def test_forward_refuses_before_any_model(tmp_path, capsys, no_model, argv, message):
  code, err = run(capsys, "forward", "--preset", "tiny", "--out", str(tmp_path / "f"), *argv)
  assert code == 2 and message in err and os.listdir(tmp_path) == [], err
