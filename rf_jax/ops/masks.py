"""Attention masks of the training path (spec §4): the structured block-causal mask and its dense form.

Backends that skip work need the mask's structure, not its bits: `BlockCausal` names it with static sizes, and
`block_causal_mask` builds the dense bool matrix the reference backend uses.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class BlockCausal(NamedTuple):
  """Self-Forcing's training mask among T = frames * frame_tokens tokens (see `block_causal_mask`)."""
  frame_tokens: int
  chunk_frames: int
  window_frames: int = -1  # -1 = global; else keys no earlier than `window_frames` frames before the chunk's end

  def dense(self, num_tokens: int) -> np.ndarray:
    if num_tokens % self.frame_tokens:
      raise ValueError(f"BlockCausal: {num_tokens} tokens is not a whole number of {self.frame_tokens}-token frames")
    return block_causal_mask(num_tokens // self.frame_tokens, self.frame_tokens, self.chunk_frames,
                             self.window_frames)

  def key_range(self, token):
    """[start, end) of the keys token `token` (int or int array) may see, besides itself."""
    frame = token // self.frame_tokens
    end = (frame // self.chunk_frames + 1) * self.chunk_frames * self.frame_tokens
    start = 0 * end if self.window_frames == -1 else end - self.window_frames * self.frame_tokens
    return start, end


def block_causal_mask(num_frames: int, frame_tokens: int, chunk_frames: int,
                      local_window_frames: int = -1) -> np.ndarray:
  """Self-Forcing's `_prepare_blockwise_causal_attn_mask`: bool [T, T], True = may attend, T = frames * tokens.

  Query q may see key k when k lies before the end of q's chunk (and, with a local window of W frames, no earlier
  than W frames before that end), or when k == q. Chunks are `chunk_frames` frames from frame 0; attention is
  bidirectional inside a chunk. The training mask has no sink.

  One reference quirk is not reproduced: when `num_frames` is not a multiple of `chunk_frames`, the reference's
  last, partial chunk also attends to the zero tokens that pad the sequence to a multiple of 128.
  """
  if num_frames <= 0 or frame_tokens <= 0 or chunk_frames <= 0:
    raise ValueError(f"block_causal_mask needs positive sizes, got num_frames={num_frames}, "
                     f"frame_tokens={frame_tokens}, chunk_frames={chunk_frames}")
  if local_window_frames == 0 or local_window_frames < -1:
    raise ValueError(f"local_window_frames must be -1 (global) or positive, got {local_window_frames}")
  total = num_frames * frame_tokens
  token = np.arange(total)
  frame = token // frame_tokens
  block_end = (frame // chunk_frames + 1) * chunk_frames * frame_tokens  # [T], may pass T in a partial last chunk
  allowed = token[None, :] < block_end[:, None]
  if local_window_frames != -1:
    allowed &= token[None, :] >= (block_end - local_window_frames * frame_tokens)[:, None]
  return allowed | np.eye(total, dtype=bool)
