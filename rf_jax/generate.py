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
  latents.npy        float32 [N, frames, C, H, W] (the PyTorch pipeline's layout), streamed chunk by chunk
  memory_trace.json  per chunk: what the memory held, the RoPE positions, candidates/scores/choice, promotions
                     (of the first batch)
  summary.json       frames, chunks, policy, prompts, videos, compile_count, chunk_step_from (cache or compiled),
                     seconds, peak_bytes, ...

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
from rf_jax.io import LatentWriter, shared_directory, write_json_atomic
from rf_jax.memory import Policy, policy_from_dict, policy_to_dict
from rf_jax.metrics import FrameStats, motion_plot
from rf_jax.ops import AttnImpl
from rf_jax.parallel.distributed import barrier, is_leader
from rf_jax.parallel import placement
from rf_jax.progress import progress_bar
from rf_jax.runinfo import peak_bytes, run_info
from rf_jax.sampling import Rollout, Sampler, random_text, seed_keys, text_rows
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
  prompts = list(req.prompts)
  if prompts and req.text_embeddings:
    raise ValueError("give text as --prompt/--prompts or as --text-embeddings, not both")
  demo_info = None
  if req.source.origin is pipeline.DiTOrigin.DEMO:
    from rf_jax import demo
    demo_info = demo.load_info()
    if prompts or req.text_embeddings:
      raise ValueError("the built-in demo model is unconditional (trained without text); --prompt and "
                       "--text-embeddings need --checkpoint or --preset")
  policy = resolve_policy(req, demo_info)
  sources = pipeline.resolve_sources(req.source.path if req.source.origin is pipeline.DiTOrigin.CHECKPOINT else None,
                                     req.source.preset, text_encoder=req.text_encoder, tokenizer=req.tokenizer,
                                     vae=req.vae)
  dit_config = req.source.config()
  sampler = resolve_sampler(req, demo_info)
  # Pixel-space models (the demo, and what `rf-jax train` makes: RGB in and out) are unconditional: zero text.
  pixels = demo_info is not None or dit_config.out_dim == 3
  text, text_info = None, {}
  if prompts:  # encode first: the text encoder is dropped before the DiT is loaded
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
  frames = req.frames if req.frames is not None else (demo_info["default_frames"] if demo_info
                                                      else pipeline.DEFAULT_FRAMES)
  spec = GenerateSpec(frames=frames, seed=req.seed, batch=req.batch if not prompts else min(req.batch, len(prompts)),
                      latent_hw=tuple(req.latent_hw or req.source.default_latent_hw()), fps=req.fps,
                      video_scale=req.video_scale or (8 if pixels else 1))
  return generate(model, policy, sampler, spec, out, text_embeddings=text, prompts=prompts or None, vae=vae,
                  pixels=pixels and req.video, force=force, progress=progress, mesh=mesh,
                  extra_summary={"source": source, **text_info})


def video_names(n: int) -> list[str]:
  return ["video.mp4"] if n == 1 else [f"video_{k:03d}.mp4" for k in range(n)]


def generate(model, policy: Policy, sampler: Sampler, spec: GenerateSpec, out: str, *,
             text_embeddings: np.ndarray | None = None, prompts: list[str] | None = None, vae=None,
             pixels: bool = False, force: bool = False, progress: bool = True, mesh: jax.sharding.Mesh | None = None,
             extra_summary: dict[str, Any] | None = None) -> dict[str, Any]:
  """Runs the rollouts and writes OUT atomically; returns the summary.

  text_embeddings: float32 [N, P, text_dim] (N samples; P <= text_len rows, zero-padded), or None for `batch`
    seeded random prompts. prompts: the N texts they came from (then each sample's noise is the seed's alone).
  vae: a `WanVAE` to decode the latents into mp4 files during the rollout (None: latents only).
  pixels: the model works in pixel space (the demo): its frames are written as they are (no VAE).
  With a `mesh`, the rollout runs sharded on it (placement.py); with several processes each writes only its own
  samples' latents and videos, and process 0 the JSON files.
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
  # One compiled step for every batch of prompts: the prompt rows kept are the most any prompt needs.
  rollout = Rollout(model, policy, sampler, batch=spec.batch, latent_hw=spec.latent_hw, frames=generated,
                    mesh=mesh, text_rows=text_rows(context))
  n = context.shape[0]
  if prompts is None and n != spec.batch:
    raise ValueError(f"{n} text embeddings for --batch {spec.batch}")
  # With prompts every sample draws the seed's noise alone (sample_noise: one key per sample); otherwise one key
  # draws the whole batch's noise, as before prompts existed.
  keys = jnp.stack([noise_key] * spec.batch) if prompts else noise_key
  hl, wl = spec.latent_hw
  shape = (n, spec.frames, cfg.out_dim, hl, wl)
  video = vae is not None or pixels
  names = video_names(n) if video else []
  chunks: list[dict[str, Any]] = []
  times: list[float] = []
  groups = [(g, min(spec.batch, n - g)) for g in range(0, n, spec.batch)]
  bar = progress_bar(rollout.num_chunks * len(groups), desc="generate", unit="chunk", enabled=progress and is_leader())
  stats: dict[int, FrameStats] = {}

  with shared_directory(out, force=force) as tmp:
    latents_path = os.path.join(tmp, "latents.npy")
    if is_leader():
      LatentWriter.create(latents_path, shape)
    barrier("rf_jax.generate.latents")
    writer = LatentWriter(latents_path, shape)
    decoder = (StreamDecoder(vae, rollout.chunk_shape, tmp, names, spec.frames, spec.fps, spec.video_scale)
               if video else None)
    t0 = time.perf_counter()
    try:
      for gi, (start, count) in enumerate(groups):
        rows = [min(start + i, n - 1) for i in range(spec.batch)]  # the last group is padded by repeats

        def on_chunk(j, chunk_out, gi=gi, start=start, count=count):
          keep = min(f, spec.frames - j * f)
          for first, block in placement.host_rows(chunk_out.latents):  # this process's samples
            real = max(0, min(block.shape[0], count - first))
            if real == 0:
              continue
            writer.write(j * f, np.moveaxis(block[:real, :keep], -1, 2), start + first)  # -> [b, F, C, H, W]
            if decoder is not None:
              for i in range(real):
                sample = start + first + i
                frames = decoder.add(sample, j, block[i])
                stats.setdefault(sample, FrameStats()).update(frames)
          if gi == 0:
            chunks.append({"chunk": j, "frames": [j * f, j * f + f - 1],
                           **policy.describe(j, chunk_out.trace, chunk_out.calls)})
          times.append(time.perf_counter())
          if j > 0:
            bar.set_postfix_str(f"{(times[-1] - times[-2]) * 1e3:.0f} ms/chunk", refresh=False)
          bar.update(1)

        rollout.run(context[rows], key=keys, on_chunk=on_chunk)
        if decoder is not None:
          decoder.finish()
    except BaseException:
      if decoder is not None:
        decoder.abort()
      raise
    bar.close()
    seconds = time.perf_counter() - t0
    writer.close()
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
        "prompts": list(prompts) if prompts else None, "video": video_info,
        "policy": policy_to_dict(policy), "sampler": {"timesteps": list(sampler.timesteps),
                                                      "context_noise": sampler.context_noise,
                                                      "shift": sampler.schedule.shift, "eta": sampler.eta},
        "compile_count": rollout.compile_count, "chunk_step_from": rollout.step_compile,
        "compile_cache": jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None,
        "seconds": round(seconds, 3),
        "first_chunk_seconds": round(times[0] - t0, 3),
        "steady_seconds_per_chunk": round(float(np.median(intervals)), 4) if intervals.size else None,
        "peak_bytes": peak, "peak_bytes_source": peak_source,
        "latents": {"file": "latents.npy", "shape": list(shape), "layout": "B F C H W", "dtype": "float32"},
        "model": cfg.to_dict(), "compute_dtype": str(jnp.dtype(model.dtype)),
        "attention": model.attention_backend().value,
        **run_info(mesh),
        **(extra_summary or {}),
    }
    if is_leader():
      write_json_atomic(os.path.join(tmp, "memory_trace.json"), {"policy": policy_to_dict(policy), "chunks": chunks})
      write_json_atomic(os.path.join(tmp, "summary.json"), summary)
    if stats and jax.process_count() == 1:
      write_json_atomic(os.path.join(tmp, "motion.json"), {"fps": spec.fps, "samples": {
          str(k): v.to_dict() for k, v in sorted(stats.items())}})
      motion_plot(stats, spec.fps, os.path.join(tmp, "motion.png"))
  return summary
