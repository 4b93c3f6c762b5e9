"""AdamW with linear warm-up + linear decay, no decay on LayerNorm/bias, clipping."""
from __future__ import annotations

import jax
import optax


def learning_rate_schedule(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
  """0 -> peak over `warmup_steps`, then linearly to 0 at `total_steps`."""
  warmup_steps = max(int(warmup_steps), 0)
  decay_steps = max(int(total_steps) - warmup_steps, 1)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, peak, max(warmup_steps, 1)),
       optax.linear_schedule(peak, 0.0, decay_steps)],
      boundaries=[warmup_steps])


def decays(name: str) -> bool:
  """BERT's rule, by the leaf's name: weight matrices and embeddings decay; every bias
  (`bias`, `out_bias`, the MLM `output_bias`) and LayerNorm `scale` does not."""
  return not (name.endswith("bias") or name == "scale")


def weight_decay_mask(params):
  """True for leaves that get weight decay (see `decays`)."""
  def mask(path, _):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]  # skips box fields
    return not names or decays(names[-1])

  return jax.tree_util.tree_map_with_path(mask, params)


def warmup_steps(optim_cfg, total_steps: int) -> int:
  """`optim.warmup_fraction` of the steps if it is set, else `optim.warmup_steps`."""
  fraction = optim_cfg.get("warmup_fraction", 0.0)
  return int(round(fraction * total_steps)) if fraction > 0 else int(optim_cfg.warmup_steps)


def make_optimizer(optim_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer and its schedule, from the config's `optim` section."""
  schedule = learning_rate_schedule(optim_cfg.learning_rate, warmup_steps(optim_cfg, total_steps),
                                    total_steps)
  chain = []
  if optim_cfg.grad_clip_norm and optim_cfg.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(optim_cfg.grad_clip_norm))
  chain.append(optax.adamw(schedule, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                           weight_decay=optim_cfg.weight_decay, mask=weight_decay_mask))
  return optax.chain(*chain), schedule
