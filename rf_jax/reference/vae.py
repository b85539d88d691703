"""The Wan VAE's parity check: `rf-jax check-reference` for a Wan VAE folder (`config.json` with `constructor_args`, `model.safetensors`,
`vae.npz`): encode (and the encoder's stage activations), decode of 3 and 6 latent frames (and the decoder's),
the pipeline's clamped decode, and the streaming decode (two chunks of 3, then one frame at a time) against the
reference's chunked decode. Arrays are in the reference's model layout [B, C, T, H, W]."""

from __future__ import annotations

from typing import Iterator

import jax.numpy as jnp
import numpy as np
from flax import nnx

from rf_jax.convert import convert_vae_tensors, vae_from_params
from rf_jax.reference.compare import Comparison, relative_error
from rf_jax.reference.folder import ReferenceFolder
from rf_jax.vae.wan_vae import VAEConfig


def vae_config_from_constructor_args(args: dict, *, source: str) -> VAEConfig:
  if args.get("attn_scales"):
    raise ValueError(f"{source}: attn_scales={args['attn_scales']} (attention outside the middle) is not supported")
  return VAEConfig(dim=int(args.get("dim", 96)), z_dim=int(args.get("z_dim", 16)),
                   dim_mult=tuple(args.get("dim_mult", (1, 2, 4, 4))),
                   num_res_blocks=int(args.get("num_res_blocks", 2)),
                   temporal_downsample=tuple(bool(b) for b in args.get("temperal_downsample", (False, True, True))))


def load_reference_vae(ref: ReferenceFolder):
  tensors = ref.tensors()
  config = vae_config_from_constructor_args(ref.config["constructor_args"], source=ref.config_path)
  return vae_from_params(config, {p: jnp.asarray(v) for p, v in convert_vae_tensors(tensors, config).items()})


def _cl(a) -> jnp.ndarray:
  return jnp.asarray(np.moveaxis(np.asarray(a), 1, -1))  # [B, C, T, H, W] -> [B, T, H, W, C]


def _ml(a) -> np.ndarray:
  return np.moveaxis(np.asarray(a), -1, 1)  # back to the reference's layout


def check_vae(ref: ReferenceFolder, z: dict, tol: float) -> Iterator[Comparison]:
  model = load_reference_vae(ref)
  if "video" in z:
    encode = nnx.capture(lambda m, v: m.encode(v), nnx.Intermediate)
    mu, acts = encode(model, _cl(z["video"]))
    yield Comparison("vae/mu", relative_error(_ml(mu), z["mu"]), tol)
    if "latent_wrapper" in z:  # pipeline layout [B, T, C, H, W]
      yield Comparison("vae/latent_wrapper", relative_error(np.moveaxis(np.asarray(mu), -1, 2), z["latent_wrapper"]),
                       tol)
    enc = acts["encoder"]
    for name, key in (("act_enc_down2", "down2"), ("act_enc_down5", "down5"), ("act_enc_down8", "down8"),
                      ("act_enc_middle", "middle")):
      if name in z:
        yield Comparison(f"vae/{name}", relative_error(_ml(enc[key].get_value()[0]), z[name]), tol)
  if "z3" in z:
    decode = nnx.capture(lambda m, v: m.decode(v), nnx.Intermediate)
    video, acts = decode(model, _cl(z["z3"]))
    yield Comparison("vae/dec3_video", relative_error(_ml(video), z["dec3_video"]), tol)
    if "dec3_video_wrapper" in z:  # clamped, pipeline layout
      clamped = np.moveaxis(np.clip(np.asarray(video), -1, 1), -1, 2)
      yield Comparison("vae/dec3_video_wrapper", relative_error(clamped, z["dec3_video_wrapper"]), tol)
    dec = acts["decoder"]
    for name, key in (("act_dec_middle", "middle"), ("act_dec_up3", "up3"), ("act_dec_up7", "up7")):
      if name in z:
        yield Comparison(f"vae/{name}", relative_error(_ml(dec[key].get_value()[0]), z[name]), tol)
  if "z6" in z:
    z6 = _cl(z["z6"])
    yield Comparison("vae/dec6_video", relative_error(_ml(model.decode(z6)), z["dec6_video"]), tol)
    half = z6.shape[1] // 2
    a, history = model.decode_stream(z6[:, :half], None, first=True)
    b, _ = model.decode_stream(z6[:, half:], history, first=False)
    streamed = np.concatenate([np.asarray(a), np.asarray(b)], axis=1)
    yield Comparison("vae/dec6_streamed_in_2_chunks", relative_error(_ml(streamed), z["dec6_video"]), tol)
