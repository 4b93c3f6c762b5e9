"""Synthetic MLM batches with the input pipeline's layout, for benchmarks and tests."""
from __future__ import annotations

import numpy as np

# The tokenizer's fixed special ids (see data/tokenizer.py).
PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
SPECIAL_IDS = (PAD, UNK, CLS, SEP, MASK)


def mlm_batch(seed: int, batch: int, seq_len: int, num_predictions: int, vocab_size: int,
              pad_fraction: float = 0.0) -> dict[str, np.ndarray]:
  """Random ids framed by [CLS] ... [SEP], with 80% of the predicted slots [MASK]ed.

  `pad_fraction` pads the tail of every other row so masks are exercised.
  """
  rng = np.random.default_rng(seed)
  ids = rng.integers(len(SPECIAL_IDS), vocab_size, size=(batch, seq_len), dtype=np.int32)
  lengths = np.full((batch,), seq_len)
  lengths[1::2] = max(num_predictions + 2, int(seq_len * (1.0 - pad_fraction)))
  mask = (np.arange(seq_len)[None, :] < lengths[:, None]).astype(np.int32)
  ids[:, 0] = CLS
  ids[np.arange(batch), lengths - 1] = SEP
  ids = np.where(mask > 0, ids, PAD)
  positions = np.stack([np.sort(rng.choice(np.arange(1, n - 1), num_predictions, replace=False))
                        for n in lengths]).astype(np.int32)
  labels = np.take_along_axis(ids, positions, axis=1)
  masked = rng.random(positions.shape) < 0.8
  np.put_along_axis(ids, positions, np.where(masked, MASK, labels), axis=1)
  return {
      "input_ids": ids,
      "input_mask": mask,
      "token_type_ids": np.zeros_like(ids),
      "masked_lm_positions": positions,
      "masked_lm_ids": labels,
      "masked_lm_weights": np.ones(positions.shape, np.float32),
  }
