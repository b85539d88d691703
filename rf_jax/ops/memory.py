"""The memory an attention call reads: frame slots of a reservoir, chosen by a slot table.

Letters: B batch, R reservoir slots, M memory entries, Q tokens per frame, N heads, H head dim.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class SlotMemory(NamedTuple):
  """One layer's memory: entry m is reservoir slot `slots[b, m]`, its keys rotated by RoPE angles cos/sin[b, m].

  Keys are stored before RoPE; backends rotate them (fused in the kernels, before the matmul in the reference).
  `slots=None` means entry m is slot m (M = R); `cos=sin=None` means the keys are stored already rotated.
  Invalid entries are masked out, and the kernels skip them.
  """
  k: Array  # [B, R, Q, N, H] pre-RoPE keys
  v: Array  # [B, R, Q, N, H]
  slots: Array | None  # int32 [B, M]
  valid: Array  # bool [B, M]
  cos: Array | None  # float32 [B, M, Q, H/2]
  sin: Array | None  # float32 [B, M, Q, H/2]

  @property
  def num_entries(self) -> int:
    return self.valid.shape[1]

  def slot_table(self) -> Array:
    """int32 [B, M]: the slot of every entry (the identity when `slots` is None)."""
    if self.slots is not None:
      return self.slots.astype(jnp.int32)
    b, m = self.valid.shape
    return jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), (b, m))


def compact_entries(memory: SlotMemory) -> tuple[Array, Array, Array]:
  """Valid entries first, for kernels that loop only over them.

  Returns (count int32 [B], entry int32 [B, M]: the original index of the i-th valid entry (then the invalid
  ones), slot int32 [B, M]: the reservoir slot of that entry).
  """
  valid = memory.valid.astype(bool)
  order = jnp.argsort(~valid, axis=1, stable=True).astype(jnp.int32)  # valid entries first, in their order
  slot = jnp.take_along_axis(memory.slot_table(), order, axis=1)
  return valid.sum(axis=1).astype(jnp.int32), order, slot
