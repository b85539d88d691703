"""Cost accounting of the compiled chunk step, without running it: matmul FLOPs and bytes counted from the optimized
HLO against the analytic minimum for a memory policy (the keys it attends to, nothing else).

XLA's own `cost_analysis()` counts a loop body once, whatever its trip count; a chunk step is a loop over
denoising calls around a loop over layers around the attention's loop over memory entries, so its module figure is
a small fraction of the work. `hlo_costs` walks the optimized HLO instead and multiplies every while body by its
trip count: XLA's `known_trip_count` for the scans over calls and layers, and, for loops whose count depends on data
(the memory loop of `rf_jax.ops.reference`, which runs once per valid step), a count the caller states.

Counted: every `dot` (2 * output elements * contracted size: the matmul FLOPs) and, per executed instruction
outside fusions, the bytes it reads and writes (what XLA calls bytes accessed): a fusion reads its inputs and writes
its output once, except that an input it only slices or gathers from counts as the part it reads, and a buffer it
updates in place (dynamic-update-slice, scatter) as the part it writes; bitcasts, tuples and parameters move
nothing.

Letters: F chunk frames, Q tokens per frame, T = F*Q, D width, L layers, S denoising steps, P prompt keys.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from typing import Any

import numpy as np

from rf_jax.config import ModelConfig

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%(\S+)\s*=\s*(.+?)\s+([\w-]+)\((.*)$")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%(\S+)\s*\(.*\{\s*$")
_FREE = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all", "partition-id",
         "replica-id", "iota"}
_SLICING = {"dynamic-slice", "slice", "gather"}
_IN_PLACE = {"dynamic-update-slice", "scatter"}


@dataclasses.dataclass
class _Instr:
  name: str
  shape: str
  op: str
  rest: str
  root: bool


def _elements(shape: str) -> list[tuple[str, tuple[int, ...]]]:
  return [(t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in _SHAPE.findall(shape)]


def _bytes(shape: str) -> int:
  return sum(_DTYPE_BYTES.get(t, 4) * math.prod(d) for t, d in _elements(shape))


def _parse(hlo: str) -> tuple[dict[str, list[_Instr]], str]:
  comps: dict[str, list[_Instr]] = {}
  entry, current = "", None
  for line in hlo.splitlines():
    head = _HEADER.match(line)
    if head:
      current = head.group(1)
      comps[current] = []
      if line.startswith("ENTRY"):
        entry = current
      continue
    if line.strip() == "}":
      current = None
      continue
    m = _INSTR.match(line) if current is not None else None
    if m:
      comps[current].append(_Instr(m.group(2), m.group(3), m.group(4), m.group(5), bool(m.group(1))))
  return comps, entry


def _attr(rest: str, key: str) -> str | None:
  m = re.search(rf"\b{key}=(%[\w.\-]+|\{{[^}}]*\}})", rest)
  return m.group(1) if m else None


def _dims(rest: str, key: str) -> tuple[int, ...]:
  m = re.search(rf"\b{key}=\{{([\d,]*)\}}", rest)
  return tuple(int(d) for d in m.group(1).split(",") if d) if m else ()


def _operands(rest: str) -> list[str]:
  depth, cur, out = 0, "", []
  for ch in rest:
    if ch == "(":
      depth += 1
    elif ch == ")":
      if depth == 0:
        break
      depth -= 1
    if ch == "," and depth == 0:
      out.append(cur)
      cur = ""
    else:
      cur += ch
  out.append(cur)
  return [o.strip().split()[-1].lstrip("%") for o in out if o.strip()]


@dataclasses.dataclass
class HloCosts:
  dot_flops: float  # matmul FLOPs, every loop body times its trip count
  bytes_accessed: float  # bytes read and written by every executed instruction outside fusions
  unknown_loops: int  # while loops without a known trip count (counted `dynamic_trips` times each)
  loops: list[tuple[str, int]]  # (body, trips) of every while loop met, in walk order
  bytes_by_op: dict[str, float]  # bytes_accessed by what the instructions came from (the JAX op of their root)

  def top_bytes(self, n: int = 8) -> dict[str, float]:
    return dict(sorted(self.bytes_by_op.items(), key=lambda kv: -kv[1])[:n])


def hlo_costs(hlo: str, dynamic_trips: int) -> HloCosts:
  """Walks an optimized HLO module (`compiled.as_text()`): see the module docstring."""
  comps, entry = _parse(hlo)
  shapes = {c: {i.name: i.shape for i in instrs} for c, instrs in comps.items()}
  loops: list[tuple[str, int]] = []
  unknown = [0]
  memo: dict[tuple[str, bool], collections.Counter] = {}

  def cost(comp: str, inside_fusion: bool) -> collections.Counter:
    """Counter with "flops", "bytes" and "bytes:<origin>" of one execution of `comp`."""
    key = (comp, inside_fusion)
    if key in memo:
      return memo[key]
    out = collections.Counter()
    for ins in comps.get(comp, []):
      if ins.op == "dot":
        lhs = _operands(ins.rest)[0]
        lhs_shape = _elements(shapes[comp].get(lhs, ""))
        contracted = math.prod(lhs_shape[0][1][d] for d in _dims(ins.rest, "lhs_contracting_dims")) if lhs_shape else 0
        out["flops"] += 2.0 * math.prod(_elements(ins.shape)[0][1]) * contracted
      if ins.op == "while":
        body, cond = _attr(ins.rest, "body").lstrip("%"), _attr(ins.rest, "condition").lstrip("%")
        m = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', ins.rest)
        if m:
          trips = int(m.group(1))
        else:
          trips = dynamic_trips
          unknown[0] += 1
        loops.append((body, trips))
        for part in (cost(body, False), cost(cond, False)):
          for k, v in part.items():
            out[k] += trips * v
        continue
      for key_name in ("calls", "to_apply"):
        called = _attr(ins.rest, key_name)
        if called and called.startswith("%") and ins.op in ("fusion", "call", "custom-call", "async-start"):
          inner = cost(called.lstrip("%"), inside_fusion or ins.op == "fusion")
          out["flops"] += inner["flops"]
          if ins.op == "call":
            out.update({k: v for k, v in inner.items() if k != "flops"})
      if ins.op == "conditional":
        branches = re.findall(r"%([\w.\-]+)", _attr(ins.rest, "branch_computations") or "")
        branches += [b.lstrip("%") for b in (_attr(ins.rest, "true_computation"), _attr(ins.rest, "false_computation"))
                     if b]
        worst = max((cost(b, False) for b in branches), key=lambda c: (c["flops"], c["bytes"]),
                    default=collections.Counter())  # as XLA: the costlier branch
        out.update(worst)
      if not inside_fusion and ins.op not in _FREE and ins.op not in ("while", "conditional", "call"):
        b = moved(comp, ins)
        out["bytes"] += b
        out[f"bytes:{origin(ins)}"] += b
    memo[key] = out
    return out

  def origin(ins: _Instr) -> str:
    """What an instruction came from: the last part of its JAX op name (a fusion: its root's), e.g. dot_general,
    exp, dynamic_slice."""
    name = _op_name(ins)
    if name is None and ins.op == "fusion":  # a matmul fusion if it holds a dot, else its first named op
      body = comps.get((_attr(ins.rest, "calls") or "").lstrip("%"), [])
      named = [i for i in body if i.op == "dot"] + [i for i in body if _op_name(i)]
      name = "dot_general" if named and named[0].op == "dot" else (_op_name(named[0]) if named else None)
    return name or ins.op

  def moved(comp: str, ins: _Instr) -> float:
    """Bytes one executed instruction reads and writes (see the module docstring)."""
    operands = _operands(ins.rest)
    sizes = [_bytes(shapes[comp].get(o, "")) for o in operands]
    if ins.op in _SLICING:
      return 2.0 * _bytes(ins.shape) + sum(sizes[1:])  # the slice read and written; indices
    if ins.op in _IN_PLACE:
      return 2.0 * sum(sizes[1:])  # the update (and indices) read, the slice written
    if ins.op != "fusion":
      return _bytes(ins.shape) + sum(sizes)
    body = comps.get((_attr(ins.rest, "calls") or "").lstrip("%"), [])
    params = {int(m.group(1)): i.name for i in body if i.op == "parameter"
              for m in [re.match(r"(\d+)", i.rest)] if m}
    users: dict[str, list[tuple[_Instr, int]]] = {}
    for i in body:
      for position, o in enumerate(_operands(i.rest)):
        users.setdefault(o, []).append((i, position))
    total = 0.0
    for index, size in enumerate(sizes):
      use = users.get(params.get(index, ""), [])
      if use and all(u.op in _SLICING and pos == 0 for u, pos in use):
        total += sum(_bytes(u.shape) for u, _ in use)  # only the slices are read
      elif use and all(u.op in _IN_PLACE and pos == 0 for u, pos in use):
        total += 0.0  # the buffer updated in place: only the update moves (counted with the update)
      else:
        total += size
    root = next((i for i in body if i.root), None)
    if root is not None and root.op in _IN_PLACE:  # written in place: the update only
      total += sum(_body_bytes(body, o) for o in _operands(root.rest)[1:2])
    else:
      total += _bytes(ins.shape)
    return total

  total = cost(entry, False)
  by_op = {k.split(":", 1)[1]: v for k, v in total.items() if k.startswith("bytes:")}
  return HloCosts(total["flops"], total["bytes"], unknown[0], loops, by_op)


def _op_name(ins: _Instr) -> str | None:
  m = re.search(r'op_name="([^"]*)"', ins.rest)
  return m.group(1).rsplit("/", 1)[-1] if m and m.group(1) else None


def _body_bytes(body: list[_Instr], name: str) -> int:
  for i in body:
    if i.name == name:
      return _bytes(i.shape)
  return 0


# ------------------------------------------------------------------------------------------------ the minimum


def _call_flops(cfg: ModelConfig, batch: int, frames: int, frame_tokens: int, memory_keys: int, prompt_keys: int,
                *, head: bool = True, last_layer_full: bool = True) -> dict[str, float]:
  """Matmul FLOPs of one DiT call on a chunk (see `analytic_chunk_flops`), by part."""
  t = batch * frames * frame_tokens
  d, dff, n_layers = cfg.dim, cfg.ffn_dim, cfg.num_layers
  patch = cfg.in_dim * cfg.patch_size[1] * cfg.patch_size[2]
  full_layer = {
      "self_projections": 4 * 2 * t * d * d,
      "self_attention": 2 * 2 * t * (memory_keys + frames * frame_tokens) * d,
      "cross_projections": 2 * 2 * t * d * d,
      "cross_attention": 2 * 2 * t * prompt_keys * d,
      "ffn": 2 * 2 * t * d * dff,
  }
  out = {k: v * (n_layers if last_layer_full else n_layers - 1) for k, v in full_layer.items()}
  if not last_layer_full:  # the refill's last layer: its key and value projections only
    out["self_projections"] += 2 * 2 * t * d * d
  f = batch * frames
  out["embeddings"] = 2 * t * patch * d + 2 * f * (cfg.freq_dim * d + d * d) + 2 * f * d * 6 * d
  out["head"] = 2 * t * d * cfg.out_dim * cfg.patch_size[1] * cfg.patch_size[2] if head else 0
  return out


def analytic_chunk_flops(cfg: ModelConfig, *, batch: int, frames: int, frame_tokens: int, steps: int,
                         memory_frames: int, prompt_keys: int) -> dict[str, float]:
  """The least matmul work a chunk step can do: S denoising calls and one refill, each attending to
  `memory_frames` frames of memory (only the valid ones: what the policy shows) plus the chunk, and to
  `prompt_keys` prompt keys; the refill computes only the keys and values the memory stores (no head, and the last
  layer stops after its key/value projections). Returns FLOPs by part and their `total`."""
  mk = memory_frames * frame_tokens
  calls = _call_flops(cfg, batch, frames, frame_tokens, mk, prompt_keys)
  refill = _call_flops(cfg, batch, frames, frame_tokens, mk, prompt_keys, head=False, last_layer_full=False)
  out = {k: steps * v + refill[k] for k, v in calls.items()}
  out["total"] = float(sum(out.values()))
  return out


def attended_frames(policy: Any, chunk_frames: int, total_frames: int) -> int:
  """Memory frames a chunk of a full, steady memory attends to (its valid entries)."""
  from rf_jax.memory import RelaxPolicy, SlowFastPolicy, WindowPolicy
  if isinstance(policy, WindowPolicy):
    window = total_frames if policy.window_frames == -1 else policy.window_frames
    return window - chunk_frames
  if isinstance(policy, RelaxPolicy):
    return policy.sink_frames + policy.history_frames + policy.tail_frames
  if isinstance(policy, SlowFastPolicy):
    return policy.cache_frames - chunk_frames
  raise ValueError(f"no steady attended-frame count for policy {policy.name!r}")


def memory_entries(policy: Any, chunk_frames: int, total_frames: int) -> int:
  """M: the entries of the policy's memory view (valid or not)."""
  from rf_jax.memory import RelaxPolicy
  if isinstance(policy, RelaxPolicy):
    return policy.view_slots()
  return attended_frames(policy, chunk_frames, total_frames)  # windows and slow-fast show their whole reservoir


def memory_loop_steps(frames: int, frame_tokens: int, entries: int) -> int:
  """Trips of the reference backend's memory loop for `frames` valid entries (see `rf_jax.ops.reference`)."""
  from rf_jax.ops.reference import frames_per_step
  return -(-frames // frames_per_step(frame_tokens, entries))


def ratio(counted: float, minimum: float) -> float:
  return float(np.float64(counted) / np.float64(minimum)) if minimum else float("nan")
