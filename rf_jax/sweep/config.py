"""A sweep's definition: the grid of memory configurations x prompts x seeds and its run settings (`Sweep`), read
from a sweep file (Python defining `SWEEP = Sweep(...)`, see configs/sweeps/)."""

from __future__ import annotations

import dataclasses
import itertools
import os
from typing import Any, Iterable

from rf_jax.config import ComputeDtype, load_python_value
from rf_jax.memory import MODES, POLICIES, Policy, policy_to_dict
from rf_jax.ops import AttnImpl
from rf_jax.sampling import PromptSchedule, Recache, Sampler

FORMAT = "rf_jax.sweep/1"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sweep:
  """A sweep's grid and run settings.

  policies: the memory configurations (`grid` expands settings).
  prompts: text (encoded by the model's umT5 once, then read from the text cache: $RF_JAX_CACHE/text or
    ~/.cache/rf_jax/text), "random:K" (the seeded random embedding `generate --seed K` uses), or a .npy of text
    embeddings [P, text_dim] (P <= text_len), relative to the sweep file.
  seeds: noise seeds; every prompt runs with every seed.
  model: a preset name (random weights from `weights_seed`; "tiny" has a random text encoder too), an rf_jax DiT
    checkpoint folder, or a pipeline folder (a Wan folder converted by `rf-jax convert`, needed for text prompts).
  batch: samples per compiled run (a multiple of the mesh's data x fsdp); default: data x fsdp.
  switches: prompt schedules to grid: each is ((frame, prompt), ...) after the sample's own prompt (prompts of the
    same kinds as `prompts`); () = no switch; (frame, prompt, True) marks a scene cut (infinity_rope's RoPE Cut).
    Switch frames and cuts are data: every schedule shares one compilation.
  initial: initial latents to grid (.npy [n, C, H, W], relative to the sweep file; the same n for all), or None.
  recache, global_sink: what a switch does to the memory (rf_jax.sampling.switching).
  Every sample (prompt x seed) runs under every (schedule, initial) condition.
  """
  policies: tuple[Policy, ...]
  prompts: tuple[str, ...] = ("random:0",)
  seeds: tuple[int, ...] = (0,)
  model: str = "tiny"
  weights_seed: int = 0
  frames: int = 21
  latent_hw: tuple[int, int] | None = None  # default (8, 8) for the tiny preset, else (60, 104)
  sampler: Sampler = Sampler.from_steps()
  batch: int | None = None
  compute_dtype: ComputeDtype = ComputeDtype.FLOAT32  # a string ("bfloat16") is read as the enum
  attention: AttnImpl = AttnImpl.AUTO  # a string ("pallas_gpu") is read as the enum
  switches: tuple[tuple[tuple[int, str], ...], ...] = ((),)
  initial: tuple[str | None, ...] = (None,)
  recache: Recache | None = None  # None: the policy's default
  global_sink: bool = True
  source_dir: str = "."  # where relative prompt files are found (set to the sweep file's folder)

  def __post_init__(self):
    for name in ("policies", "prompts", "seeds", "switches", "initial"):
      if isinstance(getattr(self, name), (str, bytes, Policy)):
        raise ValueError(f"Sweep.{name}={getattr(self, name)!r} is one value; give a tuple, e.g. "
                         f"{name}=({getattr(self, name)!r},)")
    if self.batch is not None and self.batch < 1:
      raise ValueError(f"Sweep.batch={self.batch} must be >= 1")
    if any(v < 1 for v in self.latent_hw or (1, 1)):
      raise ValueError(f"Sweep.latent_hw={self.latent_hw} must be positive")
    object.__setattr__(self, "policies", tuple(self.policies))
    object.__setattr__(self, "prompts", tuple(self.prompts))
    object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
    try:
      object.__setattr__(self, "compute_dtype", ComputeDtype.parse(self.compute_dtype))
    except ValueError:
      raise ValueError(f"Sweep.compute_dtype={self.compute_dtype!r}; expected float32 or bfloat16") from None
    object.__setattr__(self, "attention", AttnImpl.parse(self.attention))
    object.__setattr__(self, "switches", tuple(tuple(_switch(e) for e in sw) for sw in self.switches))
    object.__setattr__(self, "initial", tuple(self.initial))
    object.__setattr__(self, "recache", None if self.recache is None else Recache(self.recache))
    if not self.switches or not self.initial:
      raise ValueError("Sweep.switches and Sweep.initial must not be empty (() and None mean: none)")
    for sw in self.switches:
      schedule(sw)  # sorted, non-negative
    if not self.policies:
      raise ValueError("Sweep.policies is empty")
    for i, p in enumerate(self.policies):
      if not isinstance(p, Policy):
        raise ValueError(f"Sweep.policies[{i}] is {type(p).__name__}, not a memory policy")
    if not self.prompts or not self.seeds:
      raise ValueError("Sweep.prompts and Sweep.seeds must not be empty")
    if self.frames < 2:
      raise ValueError(f"Sweep.frames={self.frames}: metrics need at least 2 frames")

    if any(schedule(sw).has_cuts for sw in self.switches):
      for p in self.policies:
        if not p.scene_events:
          raise ValueError(f"Sweep.switches: a cut (frame, prompt, True) is Infinity-RoPE's scene event; policy "
                           f"{p.name!r} has none")

  @property
  def conditions(self) -> list[tuple[tuple[tuple[int, str], ...], str | None]]:
    """(schedule, initial) pairs; sample s runs under condition s // (prompts x seeds)."""
    return [(sw, init) for sw in self.switches for init in self.initial]

  @property
  def samples(self) -> list[tuple[str, int]]:
    """(prompt, seed) of every sample, condition-major: the prompts x seeds repeat once per condition."""
    return [(p, s) for _ in self.conditions for p in self.prompts for s in self.seeds]

  def condition_of(self, sample: int) -> tuple[tuple[tuple[int, str], ...], str | None]:
    return self.conditions[sample // (len(self.prompts) * len(self.seeds))]

  def manifest(self) -> dict[str, Any]:
    """What identifies the sweep's results (a restart must match it)."""
    return {"format": FORMAT, "configs": [policy_to_dict(p) for p in self.policies],
            "prompts": list(self.prompts), "seeds": list(self.seeds), "model": self.model,
            "weights_seed": self.weights_seed, "frames": self.frames,
            "latent_hw": None if self.latent_hw is None else list(self.latent_hw),
            "sampler": {"timesteps": list(self.sampler.timesteps), "context_noise": self.sampler.context_noise,
                        "chunk_frames": self.sampler.chunk_frames, "shift": self.sampler.schedule.shift,
                        **({"eta": self.sampler.eta} if self.sampler.eta != 1.0 else {})},
            "batch": self.batch, "compute_dtype": self.compute_dtype.value,
            **({"switches": [list(map(list, sw)) for sw in self.switches], "recache": self.recache and self.recache.value,
                "global_sink": self.global_sink} if self.switches != ((),) else {}),
            **({"initial": list(self.initial)} if self.initial != (None,) else {})}


def _switch(entry) -> tuple:
  """(frame, prompt) or (frame, prompt, cut) -> (int, str) or (int, str, True) (a cut)."""
  if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
    raise ValueError(f"Sweep.switches: {entry!r} is not (frame, prompt) or (frame, prompt, cut)")
  f, p = int(entry[0]), str(entry[1])
  return (f, p, True) if len(entry) == 3 and bool(entry[2]) else (f, p)


def schedule(switches) -> PromptSchedule:
  """The prompt schedule of one grid entry of `Sweep.switches`."""
  return PromptSchedule(tuple(e[0] for e in switches), tuple(len(e) == 3 for e in switches))


def grid(policy: Policy, **settings: Iterable) -> tuple[Policy, ...]:
  """Every combination of the settings: grid(RelaxPolicy(), lam=[0, 1, 2]) -> three policies."""
  names = list(settings)
  for n in names:
    if n not in {f.name for f in dataclasses.fields(policy)}:
      raise ValueError(f"grid: {type(policy).__name__} has no setting {n!r}")
  return tuple(dataclasses.replace(policy, **dict(zip(names, values)))
               for values in itertools.product(*(list(settings[n]) for n in names)))


def load_sweep(path: str) -> Sweep:
  """Runs the sweep file and returns its `SWEEP`."""
  sweep = load_python_value(path, "SWEEP", Sweep, what="sweep file", expected="SWEEP = rf_jax.sweep.Sweep(...)")
  return dataclasses.replace(sweep, source_dir=os.path.dirname(os.path.abspath(path)))


def label(policy: Policy) -> str:
  """A short name: the policy (and its mode when not the default), the settings that differ from its defaults, and
  its traced scalars."""
  default = type(policy)()
  mode = [f"mode={policy.mode}"] if policy.name in MODES and type(policy) is not POLICIES[policy.name] else []
  changed = [f"{f.name}={getattr(policy, f.name)}" for f in dataclasses.fields(policy)
             if getattr(policy, f.name) != getattr(default, f.name) or f.metadata.get("traced")]
  return " ".join([policy.name, *mode, *changed])
