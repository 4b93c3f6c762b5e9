"""Which compiled train step runs at each step of a token-dropping run.

XLA compiles one step per distinct static shape, so a run has a small, fixed set
of step *kinds* (`kinds`) and picks one per step from the step number alone
(`kind_at`, pure: a resumed run picks exactly what the uninterrupted one did):

  full            the plain model: strategy "none", the optional full-sequence
                  start/end fractions, and the end of a keep-ratio schedule;
  drop k          the token-dropping model keeping k tokens in the middle layers;
                  a keep-ratio schedule has one per stage (random-LTD's rising
                  keep, in `keep_schedule_stages` static steps instead of one per step);
  drop k + ScTD   every `consistency_every`-th drop step also runs the full
                  model for the [CLS] consistency term.
"""
from __future__ import annotations

import dataclasses
from typing import Optional


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
  if (td.strategy == "none" or step < td.full_start_fraction * n
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
  consistency = td.consistency_weight > 0 and step % td.consistency_every == 0
  return StepKind(keep, consistency)


def kinds(config) -> list[StepKind]:
  """Every kind `kind_at` can return for this config (what to jit), sorted, full first."""
  out = {FULL}
  if config.token_drop.strategy != "none":
    for keep in keep_stages(config):
      out.add(StepKind(keep))
      if config.token_drop.consistency_weight > 0:
        out.add(StepKind(keep, True))
  return sorted(out, key=lambda k: (k.keep_tokens is not None, k.keep_tokens or 0, k.consistency))
