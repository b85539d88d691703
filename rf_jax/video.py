"""H.264 mp4 files through the ffmpeg binary that the `imageio-ffmpeg` wheel ships (no system ffmpeg needed).

    with Mp4Writer(path, height=480, width=832, fps=16) as w:
      w.write(frames)          # uint8 [T, H, W, 3], any number of calls (frames stream to ffmpeg's stdin)
    info = probe(path)         # {"frames", "height", "width", "fps", "codec"} by decoding the file back

`to_uint8` maps the VAE's pixels as Wan saves them: clamp to [-1, 1], then (x + 1) / 2 * 255, rounded.
`StreamDecoder` turns each sample's latent chunks into its mp4 as they come (through the VAE's streaming decode, or
as they are for a pixel-space model).
"""

from __future__ import annotations

import os
import re
import subprocess

import numpy as np

FPS = 16  # Wan2.1's frame rate


def ffmpeg_exe() -> str:
  try:
    import imageio_ffmpeg
  except ImportError:
    raise ValueError("writing mp4 needs the imageio-ffmpeg package (pip install imageio-ffmpeg)") from None
  return imageio_ffmpeg.get_ffmpeg_exe()


def to_uint8(pixels: np.ndarray) -> np.ndarray:
  """float pixels in [-1, 1] (clamped) [..., 3] -> uint8."""
  x = (np.clip(np.asarray(pixels, np.float32), -1.0, 1.0) + 1.0) * 127.5
  return np.rint(x).astype(np.uint8)


class Mp4Writer:
  """Streams RGB frames into an H.264 (yuv420p, CRF 18) mp4. Odd sizes are padded by one pixel (yuv420p needs
  even ones); `probe` reports the stored size."""

  def __init__(self, path: str, *, height: int, width: int, fps: int = FPS, crf: int = 18):
    self.path, self.height, self.width = path, height, width
    self.frames = 0
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
           "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-",
           "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-c:v", "libx264", "-preset", "medium", "-crf", str(crf),
           "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-f", "mp4", path]
    self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

  def write(self, frames: np.ndarray) -> None:
    """uint8 [T, H, W, 3]."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != (self.height, self.width, 3):
      raise ValueError(f"{self.path}: frames {frames.dtype} {frames.shape}; expected uint8 "
                       f"[T, {self.height}, {self.width}, 3]")
    try:
      self._proc.stdin.write(np.ascontiguousarray(frames).tobytes())
    except BrokenPipeError:
      self.close()  # raises with ffmpeg's message
      raise
    self.frames += frames.shape[0]

  def close(self) -> None:
    if self._proc.stdin and not self._proc.stdin.closed:
      try:
        self._proc.stdin.close()
      except BrokenPipeError:
        pass
    err = self._proc.stderr.read().decode(errors="replace")
    self._proc.stderr.close()
    if self._proc.wait() != 0:
      raise RuntimeError(f"ffmpeg failed writing {self.path}: {err.strip()[-2000:]}")

  def __enter__(self) -> "Mp4Writer":
    return self

  def __exit__(self, exc_type, *_):
    if exc_type is None:
      self.close()
    else:  # do not mask the first error
      self._proc.kill()
      self._proc.wait()


def probe(path: str) -> dict:
  """Decodes the whole file with ffmpeg: {"frames", "height", "width", "fps", "codec"}. Raises if it is not a
  readable video."""
  if not os.path.isfile(path):
    raise ValueError(f"{path}: no such video")
  res = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostats", "-i", path, "-map", "0:v:0", "-f", "rawvideo",
                        "-pix_fmt", "rgb24", "-"], capture_output=True)
  err = res.stderr.decode(errors="replace")
  stream = re.search(r"Stream #0:\d+[^\n]*Video: (\w+)[^\n]*?, (\d+)x(\d+)[^\n]*?, ([\d.]+) fps", err)
  if res.returncode != 0 or stream is None:
    raise ValueError(f"{path}: not a readable video ({err.strip()[-500:]})")
  codec, width, height, fps = stream.group(1), int(stream.group(2)), int(stream.group(3)), float(stream.group(4))
  frame_bytes = width * height * 3
  return {"frames": len(res.stdout) // frame_bytes, "height": height, "width": width, "fps": fps, "codec": codec,
          "first_frame": np.frombuffer(res.stdout[:frame_bytes], np.uint8).reshape(height, width, 3)}


class StreamDecoder:
  """Each sample's chunks -> its mp4, as they come: through the VAE's streaming decode (jitted: one compile for the
  first chunk, one for the rest; each sample keeps its own fixed-shape decoder history, so pixel frames exist only
  one chunk at a time), or as they are for a pixel-space model (vae None). Frames are scaled up `scale` times
  (nearest neighbour) for viewing.

  chunk_shape: the rollout's latent chunk [B, F, h, w, C]; names: the mp4 file of each sample; frames: latent
  frames per video (the last chunk may run past them).
  """

  def __init__(self, vae, chunk_shape: tuple[int, ...], folder: str, names: list[str], frames: int, fps: int,
               scale: int = 1):
    import jax
    self.vae = vae
    if vae is not None:
      from flax import nnx
      graphdef, state = nnx.split(vae)
      self._state = state
      self._decode = jax.jit(
          lambda st, z, hist, first: nnx.merge(graphdef, st).decode_stream(z, hist, first=first), static_argnums=3)
      self._zero = vae.init_stream((1, *chunk_shape[1:]))
      s, t = vae.config.spatial_stride, vae.config.temporal_stride
    else:
      s, t = 1, 1
      self._zero = None
    self.scale = scale
    self.fps = fps
    self.height, self.width = chunk_shape[2] * s * scale, chunk_shape[3] * s * scale
    self.total = 1 + t * (frames - 1)  # pixel frames of `frames` latents
    self.folder = folder
    self.names = names
    self._open: dict[int, list] = {}  # sample -> [writer, decoder history, frames written]

  def add(self, sample: int, chunk_index: int, z: np.ndarray) -> np.ndarray:
    """z: this sample's latents of one chunk [F, h, w, C] (chunk_index 0 starts its video). Returns the uint8
    frames written [T, H/scale, W/scale, 3] (none past the video's end)."""
    import jax.numpy as jnp
    if chunk_index == 0:
      writer = Mp4Writer(os.path.join(self.folder, self.names[sample]), height=self.height, width=self.width,
                         fps=self.fps)
      self._open[sample] = [writer, self._zero, 0]
    entry = self._open[sample]
    if self.vae is not None:
      pixels, entry[1] = self._decode(self._state, jnp.asarray(z[None]), entry[1], chunk_index == 0)
      pixels = np.asarray(pixels[0])
    else:
      pixels = np.asarray(z)
    keep = max(0, min(pixels.shape[0], self.total - entry[2]))
    frames = to_uint8(pixels[:keep])
    if keep:
      scaled = frames
      if self.scale > 1:
        scaled = np.repeat(np.repeat(frames, self.scale, axis=1), self.scale, axis=2)
      entry[0].write(scaled)
      entry[2] += keep
    return frames

  def finish(self) -> None:
    for writer, *_ in self._open.values():
      writer.close()
    self._open.clear()

  def abort(self) -> None:
    for writer, *_ in self._open.values():
      writer.__exit__(RuntimeError, None, None)
    self._open.clear()


def read_image(path: str) -> np.ndarray:
  """An image file (png, jpg, ... through Pillow) -> uint8 [H, W, 3]."""
  from PIL import Image, UnidentifiedImageError
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except FileNotFoundError:
    raise ValueError(f"--image {path}: no such file") from None
  except (UnidentifiedImageError, OSError) as e:
    raise ValueError(f"--image {path}: not a readable image ({e})") from None


def read_video(path: str) -> np.ndarray:
  """Every frame of a video file (through ffmpeg) -> uint8 [T, H, W, 3]."""
  if not os.path.isfile(path):
    raise ValueError(f"--init-video {path}: no such file")
  try:
    info = probe(path)
  except ValueError as e:
    raise ValueError(f"--init-video {e}") from None
  res = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostats", "-i", path, "-map", "0:v:0", "-f", "rawvideo",
                        "-pix_fmt", "rgb24", "-"], capture_output=True)
  h, w = info["height"], info["width"]
  return np.frombuffer(res.stdout, np.uint8)[:info["frames"] * h * w * 3].reshape(-1, h, w, 3)


def fit_frames(frames: np.ndarray, height: int, width: int, *, what: str) -> np.ndarray:
  """uint8 frames [T, H, W, 3] -> float32 [T, height, width, 3] in [-1, 1]: scaled down (Lanczos) until they cover
  height x width, then centre-cropped. Frames smaller than that are refused (`what` names the input)."""
  from PIL import Image
  t, h, w, _ = frames.shape
  if h < height or w < width:
    raise ValueError(f"{what}: {w}x{h} pixels is smaller than the video's {width}x{height}")
  scale = max(height / h, width / w)
  size = (max(width, round(w * scale)), max(height, round(h * scale)))
  top, left = (size[1] - height) // 2, (size[0] - width) // 2
  out = []
  for frame in frames:
    im = Image.fromarray(frame).resize(size, Image.Resampling.LANCZOS)
    out.append(np.asarray(im)[top:top + height, left:left + width])
  return np.stack(out).astype(np.float32) / 127.5 - 1.0
