"""What the mains share: one mapping from failures to messages and exit codes.

  2  bad input (the message names the config field or the file)
  3  the loss went NaN/Inf (the last good checkpoint is kept)
  4  a checkpoint could not be written (disk full, read-only workdir)

Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable, TypeVar

T = TypeVar("T")

EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_SAVE_FAILED = 2, 3, 4


def run_or_exit(fn: Callable[[], T]) -> T:
  """Runs `fn`; on a known failure prints `error: ...` to stderr and exits with its code."""
  from tokendrop_jax.training import checkpoint, loop  # pylint: disable=import-outside-toplevel
  codes = ((loop.NonFiniteLossError, EXIT_NONFINITE),
           (checkpoint.CheckpointSaveError, EXIT_SAVE_FAILED),
           ((ValueError, FileNotFoundError), EXIT_BAD_INPUT))
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    for kind, code in codes:
      if isinstance(e, kind):
        print(f"error: {e}", file=sys.stderr)
        sys.exit(code)
    raise
