"""PyTorch `CausalWanModel` / `WanModel` state dict -> `CausalWanDiT` parameters, by a declarative rule table.

Each rule maps a PyTorch key pattern to a Flax parameter path and a layout transform. Block keys carry a layer
index and land in row `layer` of a parameter stacked over layers. Conversion is strict: it fails, naming them all,
on source keys no rule uses, parameters no key fills, and shape mismatches; it checks everything from the file
headers before reading any data.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping

import numpy as np

from rf_jax.convert.readers import SourceTensor

Path = tuple[str | int, ...]


def _identity(x: np.ndarray) -> np.ndarray:
  return x


def _linear(x: np.ndarray) -> np.ndarray:
  """torch Linear weight [out, in] -> kernel [in, out]."""
  return x.T


def _conv3d(x: np.ndarray) -> np.ndarray:
  """torch Conv3d weight [D, C, pt, ph, pw] -> kernel [pt, ph, pw, C, D]."""
  return x.transpose(2, 3, 4, 1, 0)


_SHAPE_OF = {
    _identity: lambda s: s,
    _linear: lambda s: s[::-1],
    _conv3d: lambda s: (s[2], s[3], s[4], s[1], s[0]) if len(s) == 5 else None,
}


@dataclasses.dataclass(frozen=True)
class Rule:
  pattern: str  # full-match regex on the PyTorch key; a group named `layer` marks a stacked block parameter
  target: str  # dotted Flax path; may use \1-style backreferences to the pattern's groups
  transform: Callable[[np.ndarray], np.ndarray] = _identity


_ATTN = r"(?P<attn>self_attn|cross_attn)"
RULES: tuple[Rule, ...] = (
    Rule(r"patch_embedding\.weight", "patch_embedding.kernel", _conv3d),
    Rule(r"patch_embedding\.bias", "patch_embedding.bias"),
    Rule(r"(?P<m>text_embedding|time_embedding)\.(?P<i>0|2)\.weight", r"\g<m>.layers.\g<i>.kernel", _linear),
    Rule(r"(?P<m>text_embedding|time_embedding)\.(?P<i>0|2)\.bias", r"\g<m>.layers.\g<i>.bias"),
    Rule(r"time_projection\.1\.weight", "time_projection.layers.1.kernel", _linear),
    Rule(r"time_projection\.1\.bias", "time_projection.layers.1.bias"),
    Rule(r"blocks\.(?P<layer>\d+)\.modulation", "blocks.modulation"),
    Rule(rf"blocks\.(?P<layer>\d+)\.{_ATTN}\.(?P<p>[qkvo])\.weight", r"blocks.\g<attn>.\g<p>.kernel", _linear),
    Rule(rf"blocks\.(?P<layer>\d+)\.{_ATTN}\.(?P<p>[qkvo])\.bias", r"blocks.\g<attn>.\g<p>.bias"),
    Rule(rf"blocks\.(?P<layer>\d+)\.{_ATTN}\.(?P<n>norm_q|norm_k)\.weight", r"blocks.\g<attn>.\g<n>.weight"),
    Rule(r"blocks\.(?P<layer>\d+)\.norm3\.(?P<p>weight|bias)", r"blocks.norm3.\g<p>"),
    Rule(r"blocks\.(?P<layer>\d+)\.ffn\.(?P<i>0|2)\.weight", r"blocks.ffn.layers.\g<i>.kernel", _linear),
    Rule(r"blocks\.(?P<layer>\d+)\.ffn\.(?P<i>0|2)\.bias", r"blocks.ffn.layers.\g<i>.bias"),
    Rule(r"head\.modulation", "head.modulation"),
    Rule(r"head\.head\.weight", "head.head.kernel", _linear),
    Rule(r"head\.head\.bias", "head.head.bias"),
)
_COMPILED = tuple((re.compile(r.pattern), r) for r in RULES)


class ConversionError(ValueError):
  """The source does not fit the model; the message lists every problem."""


def parse_path(dotted: str) -> Path:
  return tuple(int(p) if p.isdigit() else p for p in dotted.split("."))


def format_path(path: Path) -> str:
  return ".".join(str(p) for p in path)


@dataclasses.dataclass(frozen=True)
class Assignment:
  source: SourceTensor
  target: Path
  layer: int | None
  transform: Callable[[np.ndarray], np.ndarray]


def compile_rules(rules: Iterable[Rule]) -> tuple:
  return tuple((re.compile(r.pattern), r) for r in rules)


def match_key(key: str, compiled=_COMPILED) -> tuple[Path, int | None, Callable] | None:
  for regex, rule in compiled:
    m = regex.fullmatch(key)
    if m:
      layer = m.groupdict().get("layer")
      return parse_path(m.expand(rule.target)), (int(layer) if layer is not None else None), rule.transform
  return None


def plan(tensors: Iterable[SourceTensor], targets: Mapping[Path, tuple[int, ...]], *,
         num_layers: int, rules: tuple | None = None) -> list[Assignment]:
  """Matches source tensors to target parameters by shape alone; raises ConversionError listing every problem.

  targets: Flax path -> full (stacked) shape; stacked block parameters have a leading layer axis.
  rules: `compile_rules(...)` of another model's table (default: the DiT's).
  """
  compiled = _COMPILED if rules is None else rules
  unused, mismatched, duplicate = [], [], []
  assignments: list[Assignment] = []
  filled: dict[tuple[Path, int | None], str] = {}
  for t in tensors:
    found = match_key(t.key, compiled)
    if found is None:
      unused.append(t.key)
      continue
    path, layer, transform = found
    if path not in targets:
      unused.append(t.key)
      continue
    want = targets[path]
    if layer is not None:
      if not want or layer >= want[0]:
        unused.append(f"{t.key} (layer {layer} >= num_layers {num_layers})")
        continue
      want = want[1:]
    got = (_SHAPE_OF.get(transform) or transform.shape_of)(t.shape)
    if got != tuple(want):
      mismatched.append(f"{t.key}: source shape {t.shape} -> {got}, but {format_path(path)} "
                        f"{'(one layer) ' if layer is not None else ''}needs {tuple(want)}")
      continue
    slot = (path, layer)
    if slot in filled:
      duplicate.append(f"{t.key} and {filled[slot]} both fill {format_path(path)}"
                       f"{f'[{layer}]' if layer is not None else ''}")
      continue
    filled[slot] = t.key
    assignments.append(Assignment(t, path, layer, transform))
  unfilled = []
  for path, shape in targets.items():
    if path[0] == "blocks":
      missing = [i for i in range(shape[0]) if (path, i) not in filled]
      if missing:
        unfilled.append(f"{format_path(path)} (layers {_ranges(missing)})")
    elif (path, None) not in filled:
      unfilled.append(format_path(path))
  problems = []
  if unused:
    problems.append(f"{len(unused)} source keys no parameter uses:\n    " + "\n    ".join(sorted(unused)))
  if unfilled:
    problems.append(f"{len(unfilled)} parameters no source key fills:\n    " + "\n    ".join(sorted(unfilled)))
  if mismatched:
    problems.append(f"{len(mismatched)} shape mismatches:\n    " + "\n    ".join(mismatched))
  if duplicate:
    problems.append(f"{len(duplicate)} duplicates:\n    " + "\n    ".join(duplicate))
  if problems:
    raise ConversionError("the weights do not fit the model config:\n  " + "\n  ".join(problems))
  return assignments


def _ranges(xs: list[int]) -> str:
  out, start = [], xs[0]
  for a, b in zip(xs, xs[1:] + [None]):
    if b != a + 1:
      out.append(f"{start}" if start == a else f"{start}-{a}")
      start = b
  return ",".join(out)
