"""Token-importance strategies: which tokens the middle layers keep.

  none       no dropping: the full model every step.
  loss_ema   the paper's strategy: importance[id] is an EMA of the MLM loss of
             that id; easy (low-loss) tokens are dropped.
  frequency  importance = -log frequency of the id in the corpus (frequent
             tokens are dropped); fixed for the whole run.
  random     a fresh random score per token each step (random-LTD's control).

The importance vector [vocab] lives in the train state (and so in checkpoints)
for every strategy; only `loss_ema` changes it.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

STRATEGIES = ("none", "loss_ema", "frequency", "random")


def validate_strategy(strategy: str) -> None:
  if strategy not in STRATEGIES:
    raise ValueError(f"token_drop.strategy must be one of {STRATEGIES}, got {strategy!r}")


def count_token_ids(id_arrays: Iterable[np.ndarray], vocab_size: int) -> np.ndarray:
  """Counts of each token id over an iterable of int arrays -> int64[vocab_size]."""
  counts = np.zeros((vocab_size,), np.int64)
  for ids in id_arrays:
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
      raise ValueError(f"token id out of range [0, {vocab_size}) in count_token_ids")
    counts += np.bincount(ids, minlength=vocab_size)
  return counts


def frequency_importance(counts: np.ndarray) -> np.ndarray:
  """-log of the add-one smoothed frequency of each id -> float32[vocab]."""
  counts = np.asarray(counts, np.float64)
  freq = (counts + 1.0) / (counts.sum() + counts.size)
  return (-np.log(freq)).astype(np.float32)


def init_importance(strategy: str, vocab_size: int, *, ema_init: float = 10.0,
                    counts: np.ndarray | None = None) -> np.ndarray:
  """The importance vector a run starts from -> float32[vocab]."""
  validate_strategy(strategy)
  if strategy == "frequency":
    if counts is None:
      raise ValueError("token_drop.strategy='frequency' needs token counts of the corpus")
    if len(counts) != vocab_size:
      raise ValueError(f"token counts have {len(counts)} entries, model.vocab_size is {vocab_size}")
    return frequency_importance(counts)
  return np.full((vocab_size,), ema_init, np.float32)


def update_loss_ema(importance: Array, ids: Array, losses: Array, weights: Array, *,
                    beta: float, special_ids: Sequence[int]) -> Array:
  """One EMA step per id seen this step, from that id's mean loss.

  Args:
    importance: float32 [vocab].
    ids: int [batch, P] target ids of the prediction slots.
    losses: float [batch, P] per-slot cross-entropy.
    weights: float [batch, P]; slots with weight 0 (padding) update nothing.
    beta: EMA decay, imp <- beta * imp + (1 - beta) * mean_loss.
    special_ids: ids whose importance stays pinned.
  Returns:
    float32 [vocab].
  """
  vocab = importance.shape[0]
  ids, losses = ids.reshape(-1), jax.lax.stop_gradient(losses).reshape(-1).astype(jnp.float32)
  seen = (weights.reshape(-1) > 0).astype(jnp.float32)
  # Duplicates aggregate: a plain scatter would keep one arbitrary update per id.
  loss_sum = jax.ops.segment_sum(losses * seen, ids, num_segments=vocab)
  count = jax.ops.segment_sum(seen, ids, num_segments=vocab)
  mean_loss = loss_sum / jnp.maximum(count, 1.0)
  updated = jnp.where(count > 0, beta * importance + (1.0 - beta) * mean_loss, importance)
  special = jnp.asarray(np.asarray(special_ids, np.int32))
  return updated.at[special].set(importance[special])


def token_scores(strategy: str, importance: Array, input_ids: Array, rng: Array) -> Array:
  """Per-token scores [batch, seq] that `select_kept` ranks."""
  if strategy in ("loss_ema", "frequency"):
    return importance[input_ids]
  if strategy == "random":
    return jax.random.uniform(rng, input_ids.shape)
  raise ValueError(f"strategy {strategy!r} selects no tokens")
