"""Token-importance strategies: which tokens the middle layers keep.

  none       no dropping: the full model every step.
  loss_ema   the paper's strategy: importance[id] is an EMA of the MLM loss of
             that id; easy (low-loss) tokens are dropped.
  frequency  importance = -log frequency of the id in the corpus (frequent
             tokens are dropped); fixed for the whole run.
  random     a fresh random score per token each step (random-LTD's control).

Each strategy is one `Strategy` object (how its vector starts, how tokens are
scored, how the vector changes after a step); `get(name)` is the only place a
name is looked up, so a new strategy is one `register(Strategy(...))`. The
importance vector [vocab] lives in the train state (and so in checkpoints)
for every strategy, including those that never change it.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


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


# ---------------------------------------------------------------------------
# The strategies.


def _constant_init(vocab_size: int, ema_init: float, counts) -> np.ndarray:
  del counts
  return np.full((vocab_size,), ema_init, np.float32)


def _frequency_init(vocab_size: int, ema_init: float, counts) -> np.ndarray:
  del ema_init
  if counts is None:
    raise ValueError("token_drop.strategy='frequency' needs token counts of the corpus")
  if len(counts) != vocab_size:
    raise ValueError(f"token counts have {len(counts)} entries, model.vocab_size is {vocab_size}")
  return frequency_importance(counts)


def _lookup_scores(importance: Array, input_ids: Array, rng: Array) -> Array:
  del rng
  return importance[input_ids]


def _random_scores(importance: Array, input_ids: Array, rng: Array) -> Array:
  del importance
  return jax.random.uniform(rng, input_ids.shape)


@dataclasses.dataclass(frozen=True)
class Strategy:
  """One way of choosing the kept tokens.

  init(vocab_size, ema_init, counts) -> float32[vocab]: the vector a run starts
    from (`counts`: int64[vocab] token counts of the corpus, or None).
  scores(importance, input_ids [batch, seq], rng) -> [batch, seq]: what
    `token_drop.select_kept` ranks; None for a strategy that never drops.
  update(importance, ids, losses, weights, *, beta, special_ids) -> importance
    after a step (arguments as `update_loss_ema`); None keeps it unchanged.
  needs_counts: the run must count the corpus's token ids for `init`.
  per_draw: the scores depend on `rng` alone, so layer-wise dropping
    (one draw per middle layer) picks different subsets per layer.
  """
  name: str
  init: Callable[[int, float, Optional[np.ndarray]], np.ndarray] = _constant_init
  scores: Optional[Callable[[Array, Array, Array], Array]] = None
  update: Optional[Callable[..., Array]] = None
  needs_counts: bool = False
  per_draw: bool = False

  @property
  def drops(self) -> bool:
    return self.scores is not None


NONE = Strategy("none")
LOSS_EMA = Strategy("loss_ema", scores=_lookup_scores, update=update_loss_ema)
FREQUENCY = Strategy("frequency", init=_frequency_init, scores=_lookup_scores, needs_counts=True)
RANDOM = Strategy("random", scores=_random_scores, per_draw=True)

_REGISTRY: dict[str, Strategy] = {s.name: s for s in (NONE, LOSS_EMA, FREQUENCY, RANDOM)}


def register(strategy: Strategy) -> Strategy:
  """Adds `strategy` under its name (configs then accept it as a variant)."""
  if strategy.name in _REGISTRY and _REGISTRY[strategy.name] is not strategy:
    raise ValueError(f"an importance strategy named {strategy.name!r} exists already")
  _REGISTRY[strategy.name] = strategy
  return strategy


def unregister(name: str) -> None:
  _REGISTRY.pop(name, None)


def names() -> tuple[str, ...]:
  return tuple(_REGISTRY)


def get(name: str) -> Strategy:
  """The strategy called `name`; ValueError naming `token_drop.strategy` otherwise."""
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise ValueError(f"token_drop.strategy must be one of {names()}, got {name!r}") from None


def init_importance(strategy: str, vocab_size: int, *, ema_init: float = 10.0,
                    counts: np.ndarray | None = None) -> np.ndarray:
  """The importance vector a run of `strategy` starts from -> float32[vocab]."""
  return get(strategy).init(vocab_size, ema_init, counts)
