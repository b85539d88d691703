"""The dispatch point: backend names, `auto` per platform, the override, and cuDNN's key layout (checked on CPU
by running its exact call through XLA's implementation)."""

import importlib
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "kernels"))
from attention_cases import make_problem, rel_err  # noqa: E402
from rf_jax.ops import AttnImpl, BlockCausal, attention, resolve  # noqa: E402
backend_module = importlib.import_module("rf_jax.ops.backend")  # where `auto` is resolved


def test_auto_picks_per_platform_and_dtype(monkeypatch):
  monkeypatch.delenv("RF_JAX_ATTENTION", raising=False)
  assert resolve("auto", jnp.float32) is AttnImpl.REFERENCE  # this machine is a CPU
  monkeypatch.setattr(backend_module, "platform", lambda: "gpu")
  assert resolve("auto", jnp.bfloat16) is AttnImpl.CUDNN  # the kernels are unmeasured on a GPU (README)
  assert resolve("auto", jnp.float32) is AttnImpl.REFERENCE  # cuDNN has no float32
  monkeypatch.setattr(backend_module, "platform", lambda: "tpu")
  assert resolve("auto", jnp.bfloat16) is AttnImpl.REFERENCE
  # once the table names a kernel, a dense mask still goes to the reference (nothing to skip on), and cuDNN
  # never gets float32
  monkeypatch.setitem(backend_module.AUTO, ("tpu", "half"), AttnImpl.PALLAS_TPU)
  monkeypatch.setitem(backend_module.AUTO, ("tpu", "float32"), AttnImpl.CUDNN)
  assert resolve("auto", jnp.bfloat16) is AttnImpl.PALLAS_TPU
  assert resolve("auto", jnp.bfloat16, BlockCausal(2, 1)) is AttnImpl.PALLAS_TPU
  assert resolve("auto", jnp.bfloat16, jnp.ones((4, 4), bool)) is AttnImpl.REFERENCE
  assert resolve("auto", jnp.float32) is AttnImpl.REFERENCE


def test_environment_overrides_auto_but_not_an_explicit_choice(monkeypatch):
  monkeypatch.setenv("RF_JAX_ATTENTION", "pallas_tpu")
  assert resolve("auto", jnp.float32) is AttnImpl.PALLAS_TPU
  assert resolve("reference", jnp.float32) is AttnImpl.REFERENCE
  monkeypatch.setenv("RF_JAX_ATTENTION", "flash")
  with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
    resolve("auto", jnp.float32)


@pytest.mark.parametrize("impl", ["reference", "pallas_gpu", "pallas_tpu"])
def test_every_backend_through_the_dispatch_point(impl):
  q, k, v, mem = make_problem(frame_tokens=16, seed=9)
  assert rel_err(attention(q, k, v, memory=mem, impl=impl), q, k, v, mem, None) <= 1e-5
  mask = BlockCausal(16, 1)
  assert rel_err(attention(q, k, v, mask=mask, impl=impl), q, k, v, None, mask) <= 1e-5


def test_kernels_refuse_dense_masks_by_name():
  q, k, v, _ = make_problem(frame_tokens=16, entries=0)
  with pytest.raises(ValueError, match="pallas_gpu attention takes no dense mask"):
    attention(q, k, v, mask=jnp.ones((32, 32), bool), impl="pallas_gpu")


def test_cudnn_refuses_float32_by_name():
  q, k, v, mem = make_problem(frame_tokens=16)
  with pytest.raises(ValueError, match="cudnn attention needs bfloat16 or float16 inputs, got float32"):
    attention(q, k, v, memory=mem, impl="cudnn")


@pytest.mark.parametrize("mask", [None, BlockCausal(16, 1)])
def test_cudnn_key_layout_and_lengths(monkeypatch, mask):
  """Keys [chunk, valid entries first] with a padding length give the reference's answer (cuDNN's own kernel
  needs a GPU; its call is run here through XLA's implementation of the same API)."""
  real = jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, "dot_product_attention",
                      lambda *a, implementation=None, **kw: real(*a, implementation="xla", **kw))
  q, k, v, mem = make_problem(frame_tokens=16, dtype=jnp.bfloat16, seed=4)
  assert rel_err(attention(q, k, v, memory=mem, mask=mask, impl="cudnn"), q, k, v, mem, mask) <= 2e-2


def test_model_takes_a_backend_name():
  from flax import nnx
  from rf_jax.config import get_preset
  from rf_jax.model import CausalWanDiT
  with pytest.raises(ValueError, match="unknown attention backend 'fast'"):
    CausalWanDiT(get_preset("tiny"), attn_impl="fast", rngs=nnx.Rngs(0))
  np.testing.assert_equal(AttnImpl.parse("cudnn"), AttnImpl.CUDNN)


def test_cli_lists_every_backend():
  import argparse
  from rf_jax.cli import build_parser
  commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
  for name in ("generate", "forward"):
    flag = next(a for a in commands[name]._actions if a.dest == "attention")
    assert set(flag.choices) == {i.value for i in AttnImpl}, name
