"""`rf-jax generate`: whole videos from a model, a memory policy, prompts and a seed. Orchestration only: what to
load comes from `rf_jax.pipeline`, the rollout from `rf_jax.sampling`, the writers from `rf_jax.io` and
`rf_jax.video`, the statistics from `rf_jax.metrics`.

`generate_request` runs a `GenerateRequest` (what the command line asks for, typed): it resolves the defaults (the
built-in demo's memory and sampler, the latent size), encodes the prompts, loads the DiT and the VAE, then calls
`generate`, which runs the rollouts and writes OUT.

Outputs (written into a temporary folder beside OUT and renamed into place at the end, so a killed run leaves no
half-written OUT):
  video.mp4          H.264, 16 fps, when a VAE is given: decoded chunk by chunk during the rollout (one file per
                     sample: video_000.mp4, ... when there are several)
  latents.npy        float32 [N, initial + frames, C, H, W] (the PyTorch pipeline's layout), streamed chunk by
                     chunk; the given initial frames (image-to-video, extension) first
  memory_trace.json  per chunk: its prompt, what the memory held, the RoPE positions, candidates/scores/choice,
                     promotions (of the first batch); the prompt switches and the frames each re-cached
  summary.json       frames, chunks, policy, prompts, switches, initial_frames, videos, compile_count,
                     chunk_step_from (cache or compiled), seconds, peak_bytes, ...
  motion.json/.png   per-frame motion and colour consistency (the switches marked)

N samples run `batch` at a time through one compiled rollout. With prompts, every prompt's noise is the seed's
(sample k's video is the one `generate --prompt P_k --seed S` writes alone).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from rf_jax import pipeline
from rf_jax.config import ComputeDtype
from rf_jax.io import (LatentWriter, load_latents, resumable_directory, shared_directory,
                       write_json_atomic)
from rf_jax.memory import Geometry, Policy, policy_from_dict, policy_to_dict
from rf_jax.metrics import FrameStats, motion_plot
from rf_jax.ops import AttnImpl
from rf_jax.parallel.distributed import barrier, is_leader
from rf_jax.parallel import placement
from rf_jax.progress import progress_bar
from rf_jax.runinfo import peak_bytes, run_info
from rf_jax.sampling import (PromptSchedule, Recache, ResumePoint, Rollout, Sampler, random_text, seed_keys,
                             text_rows)
from rf_jax.resume import (check_partial, clear_progress, load_progress, load_state, replay, run_identity,
                           save_progress)
from rf_jax.video import StreamDecoder

DEFAULT_STEPS = (1000, 750, 500, 250)  # Self-Forcing's distilled 4-step list
DEFAULT_SHIFT = 5.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerateSpec:
  frames: int
  seed: int = 0
  batch: int = 1
  latent_hw: tuple[int, int] = pipeline.DEFAULT_LATENT_HW
  fps: int = 16
  video_scale: int = 1  # nearest-neighbour upscaling of the written frames


@dataclasses.dataclass(frozen=True, kw_only=True)
class GenerateRequest:
  """What `rf-jax generate` asks for. None means "the default": the built-in demo's own settings (its demo.json)
  for the demo, the reference's otherwise."""
  source: pipeline.DiTSource
  memory: str | None = None  # a policy name; None: the demo's memory, else relax
  memory_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # by field name, over the policy's
  frames: int | None = None  # latent frames (default 21; the demo's default_frames)
  seed: int = 0
  batch: int = 1
  latent_hw: tuple[int, int] | None = None
  chunk_frames: int = 3
  steps: tuple[float, ...] | None = None
  warp: bool = True
  eta: float | None = None
  shift: float | None = None
  context_noise: float = 0.0
  compute_dtype: ComputeDtype = ComputeDtype.FLOAT32
  attention: AttnImpl = AttnImpl.AUTO
  prompts: tuple[str, ...] = ()
  text_embeddings: str | None = None  # a .npy of embeddings
  text_encoder: str | None = None
  tokenizer: str | None = None
  text_cache: str | None = None  # None: the default cache folder
  use_text_cache: bool = True
  vae: str | None = None
  video: bool = True
  fps: int = 16
  video_scale: int | None = None
  switches: tuple[tuple[int, str], ...] = ()  # (latent frame, prompt): the prompt from that frame on
  cut_frames: tuple[int, ...] = ()  # switches that are scene cuts (Infinity-RoPE's RoPE Cut)
  resume: bool = False  # continue the unfinished run of OUT (.OUT.partial) from its last save
  save_every: int = 8  # chunks between resume points (0: none)
  recache: Recache | None = None  # None: the policy's default (window: window; relax: all_memory)
  global_sink: bool = True
  image: str | None = None  # image-to-video: the first frame
  init_video: str | None = None  # video extension: the video's frames first
  init_latents: str | None = None  # .npy of latents [n, C, H, W] or [1, n, C, H, W] (latents.npy's layout)


def parse_switch(text: str, flag: str = "--switch") -> tuple[int, str]:
  """--switch FRAME:PROMPT -> (frame, prompt)."""
  frame, sep, prompt = text.partition(":")
  try:
    value = int(frame)
  except ValueError:
    value = None
  if not sep or value is None:
    raise ValueError(f"{flag} {text!r}: expected FRAME:PROMPT (a latent frame, then the prompt)")
  if not prompt.strip():
    raise ValueError(f"{flag} {text!r}: the prompt is empty")
  return value, prompt


def load_prompt_schedule(path: str) -> tuple[str, tuple[tuple[int, str], ...], tuple[int, ...]]:
  """--prompt-schedule FILE.json: [{"frame": 0, "prompt": "..."}, {"frame": 30, "prompt": "...", "cut": true}, ...]
  -> (the first prompt, the switches, the frames of those marked as scene cuts)."""
  import json
  try:
    with open(path, encoding="utf-8") as fh:
      rows = json.load(fh)
  except FileNotFoundError:
    raise ValueError(f"--prompt-schedule {path}: no such file") from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"--prompt-schedule {path}: not valid JSON ({e})") from None
  if not isinstance(rows, list) or not rows or not all(
      isinstance(r, dict) and {"frame", "prompt"} <= set(r) <= {"frame", "prompt", "cut"} for r in rows):
    raise ValueError(f"--prompt-schedule {path}: expected a list of {{\"frame\": F, \"prompt\": TEXT[, \"cut\": "
                     "true]}")
  if rows[0]["frame"] != 0:
    raise ValueError(f"--prompt-schedule {path}: the first prompt must start at frame 0")
  for r in rows:
    if not isinstance(r["frame"], int) or not isinstance(r["prompt"], str) or not r["prompt"].strip():
      raise ValueError(f"--prompt-schedule {path}: {r} needs an integer frame and a non-empty prompt")
    if not isinstance(r.get("cut", False), bool):
      raise ValueError(f"--prompt-schedule {path}: {r}: cut must be true or false")
  if rows[0].get("cut"):
    raise ValueError(f"--prompt-schedule {path}: the first prompt cannot be a cut (nothing comes before it)")
  return (rows[0]["prompt"], tuple((r["frame"], r["prompt"]) for r in rows[1:]),
          tuple(r["frame"] for r in rows[1:] if r.get("cut")))


def prompt_schedule(prompts: list[str], switches: list[str] | None, schedule_file: str | None,
                    cuts: list[str] | None = None) -> tuple[list[str], tuple[tuple[int, str], ...], tuple[int, ...]]:
  """The command line's text: (prompts, switches, the frames of the switches that are scene cuts) from
  --prompt/--prompts, --switch FRAME:TEXT, --cut FRAME:TEXT and --prompt-schedule FILE (alone)."""
  cut = tuple(parse_switch(s, "--cut") for s in cuts or ())
  plain = tuple(parse_switch(s) for s in switches or ())
  for given in (plain, cut):  # each flag in order; the two are merged by frame
    check_sorted([f for f, _ in given])
  parsed = tuple(sorted(plain + cut, key=lambda fs: fs[0]))
  if not schedule_file:
    return prompts, parsed, tuple(f for f, _ in cut)
  if prompts or parsed:
    raise ValueError("give --prompt-schedule alone, or --prompt with --switch / --cut")
  first, parsed, cut_frames = load_prompt_schedule(schedule_file)
  return [first], parsed, cut_frames


def check_sorted(frames: list[int]) -> None:
  if any(b <= a for a, b in zip(frames, frames[1:])):
    raise ValueError(f"switch frames {frames} are not sorted (each switch must come after the one before)")


def check_switches(switches, total_frames: int, cut_frames=()) -> PromptSchedule:
  """The schedule of `switches` (those at `cut_frames` scene cuts), refused when a frame is out of order or past
  the video's end."""
  frames = [f for f, _ in switches]
  check_sorted(frames)
  if 0 in cut_frames:
    raise ValueError("--cut 0:...: a scene cut at frame 0 has nothing before it to cut from")
  schedule = PromptSchedule(tuple(frames), tuple(f in cut_frames for f in frames))
  schedule.check(total_frames)
  return schedule


def read_initial(req: "GenerateRequest", *, latent_hw: tuple[int, int], stride: tuple[int, int] | None,
                 in_dim: int, chunk_frames: int) -> tuple[np.ndarray | None, str | None]:
  """The given frames a video starts from, read and checked before any model is loaded: (float32 [1, n, ...],
  what they are). Latents [1, n, Hl, Wl, C]; pixels [1, n, H, W, 3] in [-1, 1] for a VAE (`stride` = its
  (temporal, spatial) strides) to encode, or as they are for a pixel-space model (`stride` None)."""
  from rf_jax.sampling.rollout import initial_blocks
  from rf_jax.video import fit_frames, read_image, read_video
  given = [x for x in (req.image, req.init_video, req.init_latents) if x]
  if len(given) > 1:
    raise ValueError("give one of --image, --init-video and --init-latents")
  if not given:
    return None, None
  hl, wl = latent_hw
  t_stride, s_stride = stride or (1, 1)
  if req.init_latents:
    frames, what = load_latents(req.init_latents, in_dim=in_dim, latent_hw=latent_hw), "latents"
  elif req.image:
    frames = fit_frames(read_image(req.image)[None], hl * s_stride, wl * s_stride, what=f"--image {req.image}")[None]
    what = "image"
  else:
    pixels = read_video(req.init_video)
    if stride is not None and (pixels.shape[0] - 1) % t_stride:
      pixels = pixels[:1 + (pixels.shape[0] - 1) // t_stride * t_stride]  # the VAE encodes 1 + 4k frames
    frames = fit_frames(pixels, hl * s_stride, wl * s_stride, what=f"--init-video {req.init_video}")[None]
    what = "video"
  n = frames.shape[1] if what == "latents" or stride is None else 1 + (frames.shape[1] - 1) // t_stride
  try:
    initial_blocks(n, chunk_frames)
  except ValueError as e:
    raise ValueError(f"--{'init-latents' if what == 'latents' else 'init-video'}: {e}") from None
  return frames, what


def resolve_policy(req: GenerateRequest, demo_info: dict | None) -> Policy:
  """The demo's memory (demo.json) for the demo without --memory, Relax Forcing's defaults otherwise; the settings
  given override its own."""
  if req.memory is None and demo_info is not None and "memory" in demo_info:
    block = dict(demo_info["memory"])
  else:
    block = {"policy": req.memory or "relax"}
  return policy_from_dict(block, source="--memory options", **req.memory_settings)


def resolve_sampler(req: GenerateRequest, demo_info: dict | None) -> Sampler:
  fitted = (demo_info or {}).get("sampler", {})
  pick = lambda given, key, default: given if given is not None else fitted.get(key, default)  # noqa: E731
  return Sampler.from_steps(pick(req.steps, "steps", DEFAULT_STEPS), warp=req.warp,
                            shift=pick(req.shift, "shift", DEFAULT_SHIFT), context_noise=req.context_noise,
                            chunk_frames=req.chunk_frames, eta=pick(req.eta, "eta", 1.0))


def generate_request(req: GenerateRequest, out: str, *, force: bool = False, progress: bool = True, mesh=None
                     ) -> dict[str, Any]:
  """Resolves, loads and runs what `req` asks for into OUT; returns the summary. Settings and inputs are checked
  before any model is loaded; the text encoder is dropped before the DiT is loaded."""
  from rf_jax.text.encode import default_cache_dir, load_text_embeddings, pad_embeddings
  if os.path.exists(out) and not force:
    raise FileExistsError(f"{os.path.abspath(out)} already exists; pass --force to replace it")
  check_partial(out, resume=req.resume, force=force)
  if req.save_every < 0:
    raise ValueError(f"--save-every {req.save_every} must be >= 0 (0: no resume points)")
  for flag, value in (("--batch", req.batch), ("--fps", req.fps), ("--chunk-frames", req.chunk_frames),
                      ("--video-scale", req.video_scale if req.video_scale is not None else 1)):
    if value < 1:
      raise ValueError(f"{flag} {value} must be >= 1")
  prompts = list(req.prompts)
  if prompts and req.text_embeddings:
    raise ValueError("give text as --prompt/--prompts or as --text-embeddings, not both")
  demo_info, words = None, None
  if req.source.origin is pipeline.DiTOrigin.DEMO:
    from rf_jax import demo
    demo_info = demo.load_info(req.source.demo_model.folder)
    words = demo.word_encoder(demo_info)  # a conditional demo reads one-word prompts
    if words is None and (prompts or req.text_embeddings):
      raise ValueError("the built-in demo model is unconditional (trained without text); --prompt and "
                       "--text-embeddings need --demo backdrop, --checkpoint or --preset")
    if words is not None and req.text_embeddings:
      raise ValueError(f"--demo {req.source.demo_model.value} reads one-word prompts ({', '.join(words.words)}): "
                       "give --prompt, not --text-embeddings")
    if words is not None and not prompts:  # its default prompt (the first of a switching video's)
      prompts = [demo_info["default_prompt"]] * (1 if req.switches else req.batch)
  if req.switches and len(prompts) != 1:
    raise ValueError("prompt switches need exactly one starting prompt (--prompt TEXT, then --switch FRAME:TEXT)")
  policy = resolve_policy(req, demo_info)
  policy.check(req.chunk_frames)  # bad memory settings are named now, before any model is loaded
  sources = pipeline.resolve_sources(req.source.path if req.source.origin is pipeline.DiTOrigin.CHECKPOINT else None,
                                     req.source.preset, text_encoder=req.text_encoder, tokenizer=req.tokenizer,
                                     vae=req.vae)
  dit_config = req.source.config()
  sampler = resolve_sampler(req, demo_info)
  frames = req.frames if req.frames is not None else (demo_info["default_frames"] if demo_info
                                                      else pipeline.DEFAULT_FRAMES)
  if frames < 1:
    raise ValueError(f"--frames {frames} must be positive")
  latent_hw = tuple(req.latent_hw or req.source.default_latent_hw())
  _, ph, pw = dit_config.patch_size
  if min(latent_hw) < 1 or latent_hw[0] % ph or latent_hw[1] % pw:
    raise ValueError(f"--latent-hw {latent_hw[0]} {latent_hw[1]}: must be positive multiples of the model's patch "
                     f"({ph}, {pw})")
  # Pixel-space models (the demos, and what `rf-jax train` makes: RGB in and out) write their frames as they are;
  # without prompts (all but a conditional demo) their text is zero.
  pixels = demo_info is not None or dit_config.out_dim == 3
  vae_strides = None
  if not pixels and sources.vae is not None:
    vae_config = pipeline.vae_config(sources.vae)
    vae_strides = (vae_config.temporal_stride, vae_config.spatial_stride)
  if (req.image or req.init_video) and not pixels and vae_strides is None:
    raise ValueError("--image and --init-video need the VAE to encode them (give --vae DIR or a pipeline "
                     "--checkpoint), or give --init-latents")
  initial, initial_kind = read_initial(req, latent_hw=latent_hw, stride=None if pixels else vae_strides,
                                       in_dim=dit_config.in_dim, chunk_frames=sampler.chunk_frames)
  n0 = 0 if initial is None else (initial.shape[1] if initial_kind == "latents" or pixels
                                  else 1 + (initial.shape[1] - 1) // vae_strides[0])
  schedule = (check_switches(req.switches, n0 + sampler.whole_chunks(frames), req.cut_frames) if req.switches
              else None)
  samples = 1 if req.switches else len(prompts) if prompts else req.batch
  check_disk(out, samples * (n0 + frames) * dit_config.out_dim * latent_hw[0] * latent_hw[1] * 4, frames,
             progress=progress)
  recache = policy.default_recache if req.recache is None else req.recache
  if schedule and (recache is Recache.FLUSH or schedule.has_cuts) and not policy.scene_events:
    raise ValueError(f"{'--recache flush' if recache is Recache.FLUSH else '--cut'}: KV Flush and RoPE Cut are "
                     f"Infinity-RoPE's scene events; --memory {policy.name} has none")
  if req.cut_frames and sampler.chunk_frames < 3:
    raise ValueError(f"--cut: a RoPE cut moves a block's last 3 frames; --chunk-frames {sampler.chunk_frames} is "
                     "too few")
  inside = [f for f in req.cut_frames if f < getattr(policy, "sink_frames", 0)]
  if inside:
    raise ValueError(f"--cut {inside[0]}:...: the cut is inside the sink (frames 0..{policy.sink_frames - 1})")
  if schedule and recache not in (Recache.NONE, Recache.FLUSH):  # a policy that cannot re-cache says so now
    policy.recache_width(Geometry(1, 1, 1, 1, 1, sampler.chunk_frames, n0 + sampler.whole_chunks(frames)), recache)
  prompts += [text for _, text in req.switches]
  text, text_info = None, {}
  if prompts and words is not None:  # a conditional demo's words (an unknown one is named here)
    text = words(prompts, dit_config.text_len)
    text_info = {"text_encoder": f"the demo's words ({', '.join(words.words)})"}
  elif prompts:  # encode first: the text encoder is dropped before the DiT is loaded
    encoder = pipeline.prompt_encoder(sources, dit_config, seed=req.seed,
                                      cache_dir=req.text_cache or default_cache_dir() if req.use_text_cache else None)
    text = pad_embeddings(encoder(prompts), dit_config.text_len)
    text_info = {"text_encoder": sources.umt5, "tokenizer": sources.tokenizer, "text_cache": encoder.cache_dir,
                 "prompts_encoded": encoder.encoded, "prompts_cached": len(set(prompts)) - encoder.encoded}
    del encoder
  elif req.text_embeddings:
    text = load_text_embeddings(req.text_embeddings, req.batch, dit_config.text_len, dit_config.text_dim)
  elif pixels:
    text = np.zeros((req.batch, dit_config.text_len, dit_config.text_dim), np.float32)
  model = pipeline.load_dit(req.source, dtype=req.compute_dtype, attn_impl=req.attention, mesh=mesh)
  source = req.source.describe()
  vae = None
  if req.video and not pixels:
    if sources.vae is None:
      print("rf-jax generate: no VAE (give --vae DIR or a pipeline --checkpoint): writing latents only",
            file=sys.stderr)
    else:
      vae = pipeline.load_vae(sources.vae, dit_config, seed=req.seed)
      source["vae"] = sources.vae
  if initial is not None and initial_kind != "latents" and not pixels:  # pixels -> latents through the VAE
    encoder = vae or pipeline.load_vae(sources.vae, dit_config, seed=req.seed)
    initial = np.asarray(encoder.encode(jnp.asarray(initial)), np.float32)  # [1, n, Hl, Wl, C]
  batch = 1 if schedule else req.batch if not prompts else min(req.batch, len(prompts))
  spec = GenerateSpec(frames=frames, seed=req.seed, batch=batch, latent_hw=latent_hw, fps=req.fps,
                      video_scale=req.video_scale or (8 if pixels else 1))
  if initial_kind:
    source["initial"] = {"kind": initial_kind, "file": req.image or req.init_video or req.init_latents,
                         "latent_frames": int(initial.shape[1])}
  return generate(model, policy, sampler, spec, out, text_embeddings=text, prompts=prompts or None, vae=vae,
                  pixels=pixels and req.video, force=force, progress=progress, mesh=mesh,
                  extra_summary={"source": source, **text_info}, initial=initial, schedule=schedule,
                  recache=recache, global_sink=req.global_sink, resume=req.resume, save_every=req.save_every)


def check_disk(out: str, nbytes: int, frames: int, *, progress: bool) -> None:
  """Says what latents.npy will take (for long runs) and refuses a run whose latents the disk of OUT cannot hold."""
  import shutil
  parent = os.path.dirname(os.path.abspath(out))
  while not os.path.isdir(parent):
    parent = os.path.dirname(parent)
  free = shutil.disk_usage(parent).free
  if nbytes > free:
    raise ValueError(f"--frames {frames}: latents.npy alone would take {nbytes / 2**30:.2f} GiB; the disk of "
                     f"{os.path.abspath(out)} has {free / 2**30:.2f} GiB free")
  if progress and nbytes > 2**30:
    print(f"rf-jax generate: latents.npy will take {nbytes / 2**30:.2f} GiB ({free / 2**30:.1f} GiB free)",
          file=sys.stderr)


def video_names(n: int) -> list[str]:
  return ["video.mp4"] if n == 1 else [f"video_{k:03d}.mp4" for k in range(n)]


def generate(model, policy: Policy, sampler: Sampler, spec: GenerateSpec, out: str, *,
             text_embeddings: np.ndarray | None = None, prompts: list[str] | None = None, vae=None,
             pixels: bool = False, force: bool = False, progress: bool = True, mesh: jax.sharding.Mesh | None = None,
             extra_summary: dict[str, Any] | None = None, initial: np.ndarray | None = None,
             schedule: PromptSchedule | None = None, recache: Recache | None = None,
             global_sink: bool = True, resume: bool = False, save_every: int = 8) -> dict[str, Any]:
  """Runs the rollouts and writes OUT atomically; returns the summary.

  text_embeddings: float32 [N, P, text_dim] (N samples; P <= text_len rows, zero-padded), or None for `batch`
    seeded random prompts. prompts: the N texts they came from (then each sample's noise is the seed's alone).
  vae: a `WanVAE` to decode the latents into mp4 files during the rollout (None: latents only).
  pixels: the model works in pixel space (the demo): its frames are written as they are (no VAE).
  With a `mesh`, the rollout runs sharded on it (placement.py); with several processes each writes only its own
  samples' latents and videos, and process 0 the JSON files.
  initial: float32 [N or 1, n, Hl, Wl, C] given frames the video starts from (image-to-video: n = 1; extension),
    copied to the output; spec.frames are generated after them.
  schedule: prompt switches; text_embeddings are then [K, P, text_dim], the K prompts of one video, and at each
    switch the memory is re-cached (`recache`, `global_sink`; rf_jax.sampling.switching).
  Killed runs: on one process the run is assembled in `.OUT.partial`, and every `save_every` chunks (0: never) the
  memory state, the chunk reached and the traces so far are saved there; `resume` continues such a run from its
  last save (same settings, checked) to the latents an uninterrupted run writes, re-decoding the saved latents into
  fresh mp4 files first.
  """
  cfg = model.config
  f = sampler.chunk_frames
  if spec.frames < 1:
    raise ValueError(f"--frames {spec.frames} must be positive")
  generated = sampler.whole_chunks(spec.frames)  # the last chunk is generated whole; frames past --frames dropped
  noise_key = seed_keys(spec.seed).noise
  if text_embeddings is None:  # a seeded random prompt: a preset runs out of the box
    context = random_text(spec.seed, spec.batch, cfg.text_len, cfg.text_dim)
    text_source = f"random (seed {spec.seed})"
  else:
    context = np.asarray(text_embeddings)
    text_source = "prompts" if prompts else "file"
  schedule = schedule or PromptSchedule()
  switching = schedule.num_prompts > 1
  if switching:  # one video, K prompts: [K, 1, P, D]
    if context.ndim != 3 or context.shape[0] != schedule.num_prompts or spec.batch != 1:
      raise ValueError(f"prompt switches need {schedule.num_prompts} prompts for one video (--batch 1)")
    context = context[:, None]
  n0 = 0 if initial is None else initial.shape[1]
  # One compiled step for every batch of prompts: the prompt rows kept are the most any prompt needs.
  rollout = Rollout(model, policy, sampler, batch=spec.batch, latent_hw=spec.latent_hw, frames=generated,
                    mesh=mesh, text_rows=text_rows(context.reshape(-1, *context.shape[-2:])), initial_frames=n0,
                    recache=recache, global_sink=global_sink)
  n = context.shape[1] if switching else context.shape[0]
  if prompts is None and n != spec.batch:
    raise ValueError(f"{n} text embeddings for --batch {spec.batch}")
  # With prompts every sample draws the seed's noise alone (sample_noise: one key per sample); otherwise one key
  # draws the whole batch's noise, as before prompts existed.
  keys = jnp.stack([noise_key] * spec.batch) if prompts else noise_key
  hl, wl = spec.latent_hw
  shape = (n, n0 + spec.frames, cfg.out_dim, hl, wl)
  video = vae is not None or pixels
  names = video_names(n) if video else []
  chunks: list[dict[str, Any]] = []
  times: list[float] = []
  groups = [(g, min(spec.batch, n - g)) for g in range(0, n, spec.batch)]
  bar = progress_bar(rollout.num_chunks * len(groups), desc="generate", unit="chunk", enabled=progress and is_leader())
  stats: dict[int, FrameStats] = {}

  multi = jax.process_count() > 1
  if resume and multi:
    raise ValueError("--resume: continuing a run of several processes is not supported yet")
  identity = run_identity(policy, sampler, spec, cfg, context, initial, schedule, recache, global_sink, model.dtype)
  folder = shared_directory(out, force=force) if multi else resumable_directory(out, force=force, resume=resume)
  with folder as entered:
    tmp, resuming = (entered, False) if multi else entered
    saved = load_progress(tmp, identity) if resuming else None
    latents_path = os.path.join(tmp, "latents.npy")
    if is_leader() and (saved is None or not os.path.exists(latents_path)):
      LatentWriter.create(latents_path, shape)
    barrier("rf_jax.generate.latents")
    writer = LatentWriter(latents_path, shape)
    decoder = (StreamDecoder(vae, rollout.chunk_shape, tmp, names, n0 + spec.frames, spec.fps, spec.video_scale)
               if video else None)
    plan = schedule.chunk_prompts([n0 + j * f for j in range(rollout.num_chunks)])
    if saved is not None:
      chunks.extend(saved["chunks"])
    t0 = time.perf_counter()
    try:
      for gi, (start, count) in enumerate(groups):
        rows = [min(start + i, n - 1) for i in range(spec.batch)]  # the last group is padded by repeats
        given = None if initial is None else initial[[min(r, initial.shape[0] - 1) for r in rows]]
        done = 0 if saved is None else (rollout.num_chunks if gi < saved["group"] else
                                        saved["chunk"] if gi == saved["group"] else 0)
        if done:  # resumed: what the killed run wrote goes through the decoder again, for fresh mp4 files
          bar.update(done)
          if decoder is not None:
            replay(decoder, stats, latents_path, range(start, start + count), chunks=done, chunk_frames=f, n0=n0)
          if done == rollout.num_chunks:
            decoder.finish() if decoder is not None else None
            continue
        elif given is not None and is_leader():  # the given frames open every video, copied
          for i in range(count):
            writer.write(0, np.moveaxis(given[i:i + 1], -1, 2), start + i)
            if decoder is not None:
              stats.setdefault(start + i, FrameStats()).update(decoder.add(start + i, 0, given[i]))

        def on_chunk(j, chunk_out, gi=gi, start=start, count=count):
          keep = min(f, spec.frames - j * f)
          index = j + (n0 > 0)  # the decoder's chunk index: the given frames were its first
          for first, block in placement.host_rows(chunk_out.latents):  # this process's samples
            real = max(0, min(block.shape[0], count - first))
            if real == 0:
              continue
            writer.write(n0 + j * f, np.moveaxis(block[:real, :keep], -1, 2), start + first)  # [b, F, C, H, W]
            if decoder is not None:
              for i in range(real):
                sample = start + first + i
                frames = decoder.add(sample, index, block[i])
                stats.setdefault(sample, FrameStats()).update(frames)
          if gi == 0:
            chunks.append({"chunk": j, "frames": [n0 + j * f, n0 + j * f + f - 1], "prompt": plan[j][0],
                           **policy.describe(j, chunk_out.trace, chunk_out.calls)})
          times.append(time.perf_counter())
          if len(times) > 1:
            bar.set_postfix_str(f"{(times[-1] - times[-2]) * 1e3:.0f} ms/chunk", refresh=False)
          bar.update(1)

        def on_checkpoint(j, state, gi=gi):
          save_progress(tmp, identity, {"group": gi, "chunk": j, "chunks": chunks, "switches": rollout.switches},
                        state)

        point = None
        if done:
          history = None
          if switching and rollout.recache_width is not None:  # the re-caches read the frames so far
            history = np.moveaxis(np.load(latents_path, mmap_mode="r")[rows], 2, -1).astype(np.float32)
          point = ResumePoint(done, load_state(tmp, saved, rollout), history, tuple(saved["switches"]))
        rollout.run(context[:, rows] if switching else context[rows], key=keys, on_chunk=on_chunk, initial=given,
                    schedule=schedule, resume=point, on_checkpoint=None if multi else on_checkpoint,
                    checkpoint_every=save_every)
        if not multi and gi + 1 < len(groups):
          save_progress(tmp, identity, {"group": gi + 1, "chunk": 0, "chunks": chunks, "switches": []}, None)
        if decoder is not None:
          decoder.finish()
    except BaseException:
      if decoder is not None:
        decoder.abort()
      raise
    bar.close()
    seconds = time.perf_counter() - t0
    writer.close()
    if not multi:
      clear_progress(tmp)
    peak, peak_source = peak_bytes()
    intervals = np.diff(times[:rollout.num_chunks]) if len(times) > 1 else np.array([])
    video_info = None
    if decoder is not None:
      video_info = {"files": names, "frames": decoder.total, "height": decoder.height, "width": decoder.width,
                    "fps": spec.fps, "codec": "h264", "seconds": round(decoder.total / spec.fps, 2),
                    "motion": {str(k): round(float(np.mean(v.motion)), 5) if v.motion else None
                               for k, v in stats.items()},
                    "consistency_end": {str(k): round(float(np.mean(v.consistency[-spec.fps:])), 4)
                                        if v.consistency else None for k, v in stats.items()}}
    summary = {
        "frames": spec.frames, "generated_frames": generated, "chunks": rollout.num_chunks, "chunk_frames": f,
        "batch": spec.batch, "samples": n,
        "latent_hw": list(spec.latent_hw), "seed": spec.seed, "text": text_source,
        "prompts": list(prompts) if prompts else None, "video": video_info, "initial_frames": n0,
        "switches": rollout.switches, "recache": rollout.recache.value if switching else None,
        "global_sink": global_sink if switching else None,
        "policy": policy_to_dict(policy), "sampler": {"timesteps": list(sampler.timesteps),
                                                      "context_noise": sampler.context_noise,
                                                      "shift": sampler.schedule.shift, "eta": sampler.eta},
        "compile_count": rollout.compile_count, "chunk_step_from": rollout.step_compile,
        "compile_cache": jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None,
        "seconds": round(seconds, 3),
        "first_chunk_seconds": round(times[0] - t0, 3),
        "steady_seconds_per_chunk": round(float(np.median(intervals)), 4) if intervals.size else None,
        "peak_bytes": peak, "peak_bytes_source": peak_source,
        "resumed_from": None if saved is None else {"group": saved["group"], "chunk": saved["chunk"]},
        "latents": {"file": "latents.npy", "shape": list(shape), "layout": "B F C H W", "dtype": "float32"},
        "model": cfg.to_dict(), "compute_dtype": str(jnp.dtype(model.dtype)),
        "attention": model.attention_backend().value,
        **run_info(mesh),
        **(extra_summary or {}),
    }
    if is_leader():
      write_json_atomic(os.path.join(tmp, "memory_trace.json"), {"policy": policy_to_dict(policy), "chunks": chunks,
                                                                 "initial_frames": n0, "switches": rollout.switches})
      write_json_atomic(os.path.join(tmp, "summary.json"), summary)
    if stats and jax.process_count() == 1:
      write_json_atomic(os.path.join(tmp, "motion.json"), {"fps": spec.fps, "samples": {
          str(k): v.to_dict() for k, v in sorted(stats.items())}})
      stride = 1 if vae is None else vae.config.temporal_stride
      marks = [(1 + stride * (e["frame"] - 1) if e["frame"] else 0) / spec.fps for e in rollout.switches]
      motion_plot(stats, spec.fps, os.path.join(tmp, "motion.png"), markers=marks)
  return summary


# ------------------------------------------------------------------------------------------------ killed runs
