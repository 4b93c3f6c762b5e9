"""Token-importance strategies: which tokens the middle layers keep.

Placeholder for `count_token_ids`; the strategies land in the same module.
"""
from typing import Iterable

import numpy as np


def count_token_ids(id_arrays: Iterable[np.ndarray], vocab_size: int) -> np.ndarray:
  """Counts of each token id over an iterable of int arrays -> int64[vocab_size]."""
  counts = np.zeros((vocab_size,), np.int64)
  for ids in id_arrays:
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
      raise ValueError(f"token id out of range [0, {vocab_size}) in count_token_ids")
    counts += np.bincount(ids, minlength=vocab_size)
  return counts
