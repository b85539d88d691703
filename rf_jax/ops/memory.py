"""The memory an attention call reads: frame slots of a reservoir, chosen by a slot table.

The reservoir is head-major, `[B, N, R, Q, H]`: one head's keys of one frame are a contiguous `[Q, H]` block, so a
backend reads a frame slot in place and multiplies it without a transposing copy. Keys are stored already rotated
by RoPE at the position the memory stored them at; an entry that the memory policy shows somewhere else carries
the extra rotation it needs (`cos`/`sin` of the shift), and a policy that shows every frame where it was stored
passes none.

Letters: B batch, R reservoir slots, M memory entries, Q tokens per frame, N heads, H head dim.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class SlotMemory(NamedTuple):
  """One layer's memory: entry m is reservoir slot `slots[b, m]`, turned further by cos/sin[b, m].

  `slots=None` means entry m is slot m (M = R); `cos=sin=None` means the keys are used as stored. Invalid entries
  are masked out, and every backend skips them. With `layer` set, k/v are every layer's reservoir stacked
  ([L, B, N, R, Q, H]) and the entries come from that layer: the XLA backend reads the frames it needs straight
  from the stack instead of copying a layer out of it on every call.
  """
  k: Array  # [B, N, R, Q, H] keys, rotated at their stored positions (or [L, ...] with `layer`)
  v: Array  # [B, N, R, Q, H]
  slots: Array | None  # int32 [B, M]
  valid: Array  # bool [B, M]
  cos: Array | None  # float32 [B, M, Q, H/2]: the extra rotation of each entry
  sin: Array | None  # float32 [B, M, Q, H/2]
  layer: Array | None = None  # int32 scalar: the layer of stacked k/v

  @property
  def num_entries(self) -> int:
    return self.valid.shape[1]

  @property
  def frame_tokens(self) -> int:
    return self.k.shape[-2]

  def of_layer(self) -> "SlotMemory":
    """This memory with k/v of its one layer ([B, N, R, Q, H]; XLA may copy the layer out of the stack)."""
    if self.layer is None:
      return self
    take = lambda a: jax.lax.dynamic_index_in_dim(a, self.layer, axis=0, keepdims=False)  # noqa: E731
    return self._replace(k=take(self.k), v=take(self.v), layer=None)

  def slot_table(self) -> Array:
    """int32 [B, M]: the slot of every entry (the identity when `slots` is None)."""
    if self.slots is not None:
      return self.slots.astype(jnp.int32)
    b, m = self.valid.shape
    return jnp.broadcast_to(jnp.arange(m, dtype=jnp.int32), (b, m))


def compact_entries(memory: SlotMemory) -> tuple[Array, Array, Array]:
  """Valid entries first, for backends that loop only over them.

  Returns (count int32 [B], entry int32 [B, M]: the original index of the i-th valid entry (then the invalid
  ones), slot int32 [B, M]: the reservoir slot of that entry).
  """
  valid = memory.valid.astype(bool)
  order = jnp.argsort(~valid, axis=1, stable=True).astype(jnp.int32)  # valid entries first, in their order
  slot = jnp.take_along_axis(memory.slot_table(), order, axis=1)
  return valid.sum(axis=1).astype(jnp.int32), order, slot
