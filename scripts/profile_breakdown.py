"""Where a traced chunk step's time went, by part of the model: attention, RoPE, projections, FFN, norms and
modulation, memory copies and reads, the layer loop's slices, the refill, ... read from a jax.profiler trace and the
optimized HLO of the same run, without a viewer.

    XLA_FLAGS=--xla_dump_to=/tmp/dump .venv/bin/python scripts/bench_rollout.py --preset tiny --frames 30 \\
        --policies relax --profile /tmp/trace
    .venv/bin/python scripts/profile_breakdown.py /tmp/trace --hlo /tmp/dump --chunks 2

Any trace of rf_jax's chunk step works (e.g. ../shared/bench/torch_ref/jax_rollout.py CASE --profile DIR, run
under XLA_FLAGS=--xla_dump_to=DUMP), whichever commit made it. Each XLA op's self time (its duration less the ops
nested in it, summed over threads) goes to the part of the model its HLO instruction came from: the Python stack
XLA keeps with every instruction (stack frames in the dump; for a fusion, those of everything fused into it),
matched against the rules in `PARTS`: the first rule naming any function on those stacks wins. Prints one JSON line per part (ms per chunk, share) and a Markdown table with --markdown.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re

# (part, functions any of which on the instruction's stack puts it there): the first rule that matches wins.
PARTS = [
    ("refill call (keys only)", {"refill_kv"}),  # a whole call in code before the keys-only refill
    ("cross-attention (projections, attention)", {"CrossAttention.__call__"}),
    ("memory reads (per-frame gathers)", {"_frames"}),
    ("memory copies (gather, rotate, concat, mask)", {"gather_memory", "dense_mask", "rotate_memory", "compact_entries",
                                                      "slot_table", "SlotMemory.slot_table", "of_layer"}),
    ("RoPE", {"apply_rope", "rotate", "rope_cos_sin", "frame_cos_sin", "shift_cos_sin", "stored_kv"}),
    ("self-attention: QK, softmax, PV", {"memory_attention", "_memory_loop", "_memory_loop.<locals>.step",
                                         "reference_attention", "reference_memory_attention", "dense_attention",
                                         "dense_memory_attention", "attention"}),
    ("self-attention projections, q/k norms", {"SelfAttention.__call__", "SelfAttention.project_kv",
                                               "RMSNorm.__call__"}),
    ("FFN (matmuls, GELU)", {"Sequential.__call__", "gelu_tanh"}),
    ("norms, modulation, gates, residual", {"WanBlock.__call__", "WanBlock.keys_only", "layer_norm", "modulate",
                                            "LayerNorm.__call__", "WanBlock.__call__.<locals>.<genexpr>"}),
    ("memory bookkeeping (selection, writes)", set()),  # any frame in rf_jax/memory/
    ("embeddings, head, layer loop (per-layer slices)", set()),  # any frame in rf_jax/model/dit.py
    ("sampler", set()),  # rf_jax/sampling/
]


def newest(pattern: str) -> str:
  found = glob.glob(pattern)
  if not found:
    raise SystemExit(f"nothing matches {pattern}")
  return max(found, key=os.path.getmtime)


def self_times(xplane: str) -> dict[tuple[str, str], float]:
  """{(module, hlo op): self ns} over every thread of the host."""
  import warnings
  warnings.filterwarnings("ignore", category=DeprecationWarning)  # ProfileData's event stats, on some versions
  import warnings
  warnings.filterwarnings("ignore", category=DeprecationWarning)  # ProfileData's event stats, on some versions
  from jax.profiler import ProfileData
  data = ProfileData.from_file(xplane)
  out: dict[tuple[str, str], float] = collections.defaultdict(float)
  for plane in data.planes:
    if not plane.name.startswith("/host:CPU"):
      continue
    for line in plane.lines:
      events = []
      for e in line.events:
        st = dict(e.stats)
        if "hlo_op" in st:
          events.append((e.start_ns, e.start_ns + e.duration_ns, st.get("hlo_module", ""), st["hlo_op"]))
      events.sort(key=lambda x: (x[0], -x[1]))
      open_ = []  # indices of events still running: an event's self time excludes its direct children
      own = [end - start for start, end, *_ in events]
      for i, (start, end, *_rest) in enumerate(events):
        while open_ and events[open_[-1]][1] <= start:
          open_.pop()
        if open_:
          own[open_[-1]] -= end - start
        open_.append(i)
      for (start, end, module, op), ns in zip(events, own):
        out[(module, op)] += ns
  return out


def stacks(hlo_text: str) -> dict[str, list[tuple[str, str]]]:
  """{instruction: [(file, function), ...] innermost first} from an optimized HLO dump's stack frame tables."""
  section, files, functions, locations, frames = None, {}, {}, {}, {}
  instr_frame = {}
  for line in hlo_text.splitlines():
    if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
      section = line
      continue
    m = re.match(r'^(\d+) "(.*)"$', line)
    if section == "FileNames" and m:
      files[int(m.group(1))] = m.group(2)
    elif section == "FunctionNames" and m:
      functions[int(m.group(1))] = m.group(2)
    elif section == "FileLocations" and (m := re.match(r"^(\d+) \{file_name_id=(\d+) function_name_id=(\d+)", line)):
      locations[int(m.group(1))] = (int(m.group(2)), int(m.group(3)))
    elif section == "StackFrames" and (m := re.match(r"^(\d+) \{file_location_id=(\d+) parent_frame_id=(\d+)", line)):
      frames[int(m.group(1))] = (int(m.group(2)), int(m.group(3)) - 1)  # the caller's frame (printed + 1; 0: none)
    elif (m := re.match(r"^\s*(?:ROOT\s+)?%(\S+) = .*stack_frame_id=(\d+)", line)):
      instr_frame[m.group(1)] = int(m.group(2))
  out = {}
  for name, frame in instr_frame.items():
    stack, seen = [], set()
    while frame in frames and frame not in seen:
      seen.add(frame)
      loc, parent = frames[frame]
      file_id, fn_id = locations.get(loc, (0, 0))
      stack.append((files.get(file_id, "?"), functions.get(fn_id, "?")))
      frame = parent
    out[name] = stack
  return out


def fused_stacks(hlo_text: str, own: dict[str, list]) -> dict[str, list]:
  """The frames an instruction came from: a fusion's are those of everything fused into it; an instruction with
  none (a matmul XLA rewrote) takes those of where its result goes."""
  bodies, current = {}, None
  for line in hlo_text.splitlines():
    if (m := re.match(r"^%(\S+) \(.*\{\s*$", line)):
      current = m.group(1)
      bodies[current] = []
    elif line.strip() == "}":
      current = None
    elif current and (m := re.match(r"^\s*(ROOT\s+)?%(\S+) = \S+ (\S+?)\(", line)):
      bodies[current].append((m.group(2), m.group(3), bool(m.group(1))))
  out = dict(own)
  users: dict[str, list[str]] = collections.defaultdict(list)
  for line in hlo_text.splitlines():
    m = re.match(r"^\s*(?:ROOT\s+)?%(\S+) = \S+ ([\w-]+)\((.*)", line)
    if m:
      out.setdefault(m.group(1), [])
      for operand in re.findall(r"%([\w.\-]+)", m.group(3).split("),")[0]):
        users[operand].append(m.group(1))
    m = re.match(r"^\s*(?:ROOT\s+)?%(\S+) = .* fusion\(.*calls=%([\w.\-]+)", line)
    if not m:
      continue
    merged = [frame for n, _, _ in bodies.get(m.group(2), []) for frame in own.get(n, [])]
    out[m.group(1)] = merged + own.get(m.group(1), [])
  ours = lambda stack: bool(stack) and any("/rf_jax/" in f for f, _ in stack)  # noqa: E731
  for name in list(out):  # nothing says where it came from (a matmul XLA rewrote): where its result goes
    frontier, seen = [name], {name}
    for _ in range(4):
      if ours(out[name]):
        break
      frontier = [u for n in frontier for u in users.get(n, []) if u not in seen]
      seen.update(frontier)
      found = next((u for u in frontier if ours(own.get(u))), None)
      if found:
        out[name] = own[found]
  return out


def part_of(stack: list[tuple[str, str]]) -> str:
  names = {fn for _, fn in stack} | {fn.rsplit(".", 1)[-1] for _, fn in stack}
  for part, functions in PARTS:
    if names & functions:
      return part
  files = [f for f, _ in stack]
  if any("/rf_jax/memory/" in f for f in files):
    return "memory bookkeeping (selection, writes)"
  if any(f.endswith("rf_jax/model/dit.py") for f in files):
    return "embeddings, head, layer loop (per-layer slices)"
  if any("/rf_jax/sampling/" in f for f in files):
    return "sampler"
  return "other (loop control, XLA's own)"


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("trace", help="the --profile folder (holds plugins/profile/<run>/*.xplane.pb)")
  ap.add_argument("--hlo", required=True, help="the XLA dump folder of the same run (--xla_dump_to)")
  ap.add_argument("--module", default="jit__chunk_step")
  ap.add_argument("--chunks", type=int, default=1, help="chunks in the trace (times are per chunk)")
  ap.add_argument("--markdown", action="store_true")
  a = ap.parse_args()
  times = self_times(newest(os.path.join(a.trace, "plugins", "profile", "*", "*.xplane.pb")))
  times = {op: ns for (module, op), ns in times.items() if module == a.module}
  if not times:
    raise SystemExit(f"no ops of module {a.module} in the trace")
  text = open(newest(os.path.join(a.hlo, f"module_*.{a.module}.cpu_after_optimizations.txt"))).read()
  where = fused_stacks(text, stacks(text))
  parts: dict[str, float] = collections.defaultdict(float)
  for op, ns in times.items():
    parts[part_of(where.get(op, []))] += ns
  total = sum(parts.values())
  rows = sorted(parts.items(), key=lambda kv: -kv[1])
  for part, ns in rows:
    print(json.dumps({"part": part, "ms_per_chunk": round(ns / 1e6 / a.chunks, 1), "share": round(ns / total, 3)}))
  print(json.dumps({"part": "total", "ms_per_chunk": round(total / 1e6 / a.chunks, 1), "share": 1.0}))
  if a.markdown:
    print("| part | ms per chunk | share |\n|---|---|---|")
    for part, ns in rows:
      print(f"| {part} | {ns / 1e6 / a.chunks:.0f} | {100 * ns / total:.0f} % |")
    print(f"| total | {total / 1e6 / a.chunks:.0f} | 100 % |")


if __name__ == "__main__":
  main()
