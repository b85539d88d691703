"""H.264 mp4 files through the ffmpeg binary that the `imageio-ffmpeg` wheel ships (no system ffmpeg needed).

    with Mp4Writer(path, height=480, width=832, fps=16) as w:
      w.write(frames)          # uint8 [T, H, W, 3], any number of calls (frames stream to ffmpeg's stdin)
    info = probe(path)         # {"frames", "height", "width", "fps", "codec"} by decoding the file back

`to_uint8` maps the VAE's pixels as Wan saves them: clamp to [-1, 1], then (x + 1) / 2 * 255, rounded.
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
