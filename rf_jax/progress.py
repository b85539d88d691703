"""The one progress bar of every long command (generate, sweep, train, convert): tqdm on stderr, off when not
wanted (`--quiet`, or a process other than the leader)."""

from __future__ import annotations

import sys


def progress_bar(total: int, *, desc: str, unit: str, enabled: bool = True, initial: int = 0):
  """A tqdm bar (a silent one when `enabled` is False): `.update(n)`, `.set_postfix_str(s)`, `.close()`."""
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not enabled, file=sys.stderr,
              dynamic_ncols=True)
