"""Which compiled train step runs at each step of a token-dropping run.

XLA compiles one step per distinct static shape, so a run has a small, fixed set
of step *kinds* (`kinds`) and picks one per step from the step number alone
(`kind_at`, pure: a resumed run picks exactly what the uninterrupted one did):

  full            the plain model: a strategy that never drops ("none"), the
                  optional full-sequence start/end fractions, and the end of a
                  keep-ratio schedule;
  drop k          the token-dropping model keeping k tokens in the middle layers;
                  a keep-ratio schedule has one per stage (random-LTD's rising
                  keep, in `keep_schedule_stages` static steps instead of one per step);
  drop k + ScTD   every `consistency_every`-th drop step also runs the full
                  model for the [CLS] consistency term. It is the last step of
                  each group of `consistency_every` (the one that brings the
                  step count to a multiple of it), so a `log_every` that is a
                  multiple of `consistency_every` logs `consistency_kl`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from tokendrop_jax import importance


@dataclasses.dataclass(frozen=True, order=True)
class StepKind:
  keep_tokens: Optional[int] = None  # None = the full model
  consistency: bool = False

  @property
  def full(self) -> bool:
    return self.keep_tokens is None

  @property
  def name(self) -> str:
    if self.full:
      return "full"
    return f"drop{self.keep_tokens}" + ("_sctd" if self.consistency else "")


FULL = StepKind()


def keep_stages(config) -> list[int]:
  """The static keep of each schedule stage, rising from `keep_tokens` toward seq_len.

  Stage i keeps keep + (seq_len - keep) * i / n tokens, rounded down to a
  multiple of 8 (TPU/GPU tiles) but never below `keep_tokens`. Without a
  schedule: [keep_tokens].
  """
  td, seq = config.token_drop, config.data.seq_len
  n = td.keep_schedule_stages
  if n <= 1:
    return [td.keep_tokens]
  stages = []
  for i in range(n):
    k = td.keep_tokens + (seq - td.keep_tokens) * i // n
    stages.append(max(k - k % 8, td.keep_tokens))
  return stages


def kind_at(config, step: int) -> StepKind:
  """The step kind that runs at `step` (0-based)."""
  td, n = config.token_drop, config.train.num_steps
  if (not importance.get(td.strategy).drops or step < td.full_start_fraction * n
      or step >= n - td.full_end_fraction * n):
    return FULL
  stages = keep_stages(config)
  if td.keep_schedule_stages > 1:
    span = td.keep_schedule_fraction * n  # steps the schedule covers; full after it
    if step >= span:
      return FULL
    keep = stages[min(int(step * len(stages) // span), len(stages) - 1)]
  else:
    keep = stages[0]
  consistency = td.consistency_weight > 0 and (step + 1) % td.consistency_every == 0
  return StepKind(keep, consistency)


def kinds(config) -> list[StepKind]:
  """Every kind `kind_at` can return for this config (what to jit), sorted, full first."""
  out = {FULL}
  if importance.get(config.token_drop.strategy).drops:
    for keep in keep_stages(config):
      out.add(StepKind(keep))
      if config.token_drop.consistency_weight > 0:
        out.add(StepKind(keep, True))
  return sorted(out, key=lambda k: (k.keep_tokens is not None, k.keep_tokens or 0, k.consistency))


def kind_counts(config) -> dict[StepKind, int]:
  """How many of the run's `train.num_steps` steps take each kind, without walking them.

  `kind_at`'s keep is constant between a few breakpoints (the full start/end
  fractions, the schedule's stage edges and its end); each breakpoint is taken
  with its neighbours, so float rounding in `kind_at` cannot move an edge
  past one. Within a drop interval [a, b), the ScTD steps are those with
  (step + 1) % consistency_every == 0.
  """
  td, n = config.token_drop, config.train.num_steps
  edges = [td.full_start_fraction * n, n - td.full_end_fraction * n]
  if td.keep_schedule_stages > 1:
    span = td.keep_schedule_fraction * n
    stages = len(keep_stages(config))
    edges += [i * span / stages for i in range(1, stages + 1)]
  points = {0, n}
  for e in edges:
    c = math.ceil(e)
    points.update(p for p in (c - 1, c, c + 1) if 0 < p < n)
  points = sorted(points)
  counts: dict[StepKind, int] = {}
  for a, b in zip(points, points[1:]):
    kind = dataclasses.replace(kind_at(config, a), consistency=False)
    sctd = 0
    if not kind.full and td.consistency_weight > 0:
      every = td.consistency_every
      sctd = b // every - a // every
      if sctd:
        key = dataclasses.replace(kind, consistency=True)
        counts[key] = counts.get(key, 0) + sctd
    if b - a - sctd:
      counts[kind] = counts.get(kind, 0) + b - a - sctd
  return counts


def drop_settings(config, kind: StepKind, special_ids, strategy: Optional[str] = None):
  """The train step's `DropSettings` for `kind` under `config.token_drop` (the one place
  they are built: the loop's steps and the benchmarks' alike). `strategy` overrides the
  config's (the benchmarks time loss_ema whatever the config names)."""
  from tokendrop_jax.training import step as step_lib  # pylint: disable=import-outside-toplevel
  td = config.token_drop
  return step_lib.DropSettings(
      strategy=strategy or td.strategy, keep_tokens=kind.keep_tokens,
      special_ids=tuple(special_ids), ema_beta=td.ema_beta, layerwise=td.layerwise,
      consistency_weight=td.consistency_weight if kind.consistency else 0.0,
      consistency_form=td.consistency_form, random_ties=td.random_ties)
