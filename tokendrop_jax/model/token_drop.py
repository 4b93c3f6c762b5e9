"""Static-shape token selection and the gather/scatter around the middle layers.

Everything here has shapes fixed by `keep` (a Python int), so XLA compiles the
token-dropping step once: a static top-k instead of boolean masks, gathers and
scatters with index arrays of shape [batch, keep].

Every operation is per example, so that a batch sharded over devices stays
where it is (checked on the compiled program, tests/test_sharded_comm.py): the
top-k is a stable sort along the sequence (XLA's SPMD partitioner all-gathers
the operand of `lax.top_k`), and gather/scatter run under `vmap`, whose batch
dimension becomes an operand batching dimension (a global `arange(batch)` index
made the partitioner all-gather the rows and indices).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Scores are shifted so that special tokens always win and padding always loses,
# whatever the importance values are (they are finite and far below 1e6).
_SPECIAL_BONUS = 1e6
_PAD_PENALTY = -1e7


def selection_scores(scores: Array, input_ids: Array, input_mask: Array,
                     special_ids: Sequence[int]) -> Array:
  """Scores [batch, seq] with specials forced up and padding forced down."""
  scores = scores.astype(jnp.float32)
  special = jnp.isin(input_ids, jnp.asarray(np.asarray(special_ids, np.int32)))
  scores = jnp.where(special, scores + _SPECIAL_BONUS, scores)
  return jnp.where(input_mask > 0, scores, _PAD_PENALTY)


def select_kept(scores: Array, input_ids: Array, input_mask: Array,
                special_ids: Sequence[int], keep: int, tie_rng: Array | None = None) -> Array:
  """Positions of the `keep` most important tokens per row, in position order.

  Args:
    scores: [batch, seq] importance of each token (higher = keep).
    input_ids: [batch, seq] token ids (to find special tokens).
    input_mask: [batch, seq] 1 for real tokens, 0 for padding.
    special_ids: ids always kept (e.g. CLS, SEP, MASK, UNK); padding is a mask,
      not an id, so it is dropped first even if PAD is listed here.
    keep: static number of kept tokens.
    tie_rng: None: ties go to the lower position, as with `lax.top_k` (at the
      start of training every id has the same EMA, so the tail of every row is
      dropped). A PRNG key: exact ties are broken at random (a second sort key).
  Returns:
    int32 [batch, keep], sorted ascending within each row.
  """
  if not 0 < keep <= scores.shape[1]:
    raise ValueError(f"keep_tokens must be in [1, {scores.shape[1]}], got {keep}")
  scores = selection_scores(scores, input_ids, input_mask, special_ids)
  positions = jax.lax.broadcasted_iota(jnp.int32, scores.shape, 1)
  if tie_rng is None:
    _, idx = jax.lax.sort((-scores, positions), dimension=1, is_stable=True, num_keys=1)
  else:
    ties = jax.random.uniform(tie_rng, scores.shape)  # [batch, seq], orders equal scores
    _, _, idx = jax.lax.sort((-scores, ties, positions), dimension=1, is_stable=True,
                             num_keys=2)
  return jnp.sort(idx[:, :keep], axis=-1)


def gather_tokens(x: Array, idx: Array) -> Array:
  """x [batch, seq, ...] at positions idx [batch, k] -> [batch, k, ...]."""
  return jax.vmap(lambda row, i: row[i])(x, idx)


def gather_kept(x: Array, keep: Array) -> Array:
  """`gather_tokens` at kept positions (`select_kept`: distinct and sorted in each row).

  Saying so lets the gradient, a scatter-add into [batch, seq, ...], be plain writes: with
  possibly repeated indices a GPU adds with atomics, which for bfloat16 are
  compare-and-swap loops on the 32-bit word two neighbouring elements share."""
  return jax.vmap(lambda row, i: row.at[i].get(unique_indices=True, indices_are_sorted=True))(
      x, keep)


def scatter_tokens(x: Array, idx: Array, rows: Array) -> Array:
  """x [batch, seq, hidden] with rows [batch, k, hidden] written at kept positions idx
  [batch, k] (distinct and sorted, as `gather_kept`'s)."""
  return jax.vmap(lambda row, i, r: row.at[i].set(r, unique_indices=True,
                                                  indices_are_sorted=True))(x, idx, rows)
