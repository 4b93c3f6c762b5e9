"""What the options beyond the paper cost per step: ScTD, keep schedule, layer-wise.

  .venv/bin/python benchmarks/options_speed.py --config=configs/bench_cpu.py \
      [--output=benchmarks/results/options_speed.json]

Times, interleaved on one synthetic batch (median of --steps after --warmup):
  full               the plain model
  drop               the paper (loss_ema, keep_tokens)
  drop_sctd          a ScTD step: drop + the full model's [CLS] target forward
  drop_layerwise     random-LTD: a random subset per middle layer (random)
  drop_random        the paper's split with random scores (layer-wise's baseline)
  keep_<k>           each stage of the default 4-stage keep schedule
and the run-average cost of each option against the full model: ScTD at
`consistency_every`, and the schedule's stages weighted by their steps (with
the full-sequence tail), next to the analytic FLOPs ratios.
"""
from __future__ import annotations

import json
import os
import statistics

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/x.py")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per function.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps per function after compiling.")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/options_speed.json", "JSON path.")


def main(argv):
  del argv
  import flax.linen as nn
  import jax

  from tokendrop_jax import benchmark, config_lib, flops, importance, synthetic
  from tokendrop_jax.model.bert import BertForPretraining
  from tokendrop_jax.training import optim, state as state_lib, step as step_lib, step_plan

  config = _CONFIG.value
  config_lib.validate(config)
  cfg = config_lib.model_config(config)
  data, td = config.data, config.token_drop
  b, s, p = data.global_batch_size, data.seq_len, data.max_predictions_per_seq
  model = BertForPretraining(cfg)
  optimizer, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
  batch = jax.device_put(synthetic.mlm_batch(0, b, s, p, cfg.vocab_size))
  imp0 = importance.init_importance("loss_ema", cfg.vocab_size, ema_init=td.ema_init)
  init = jax.jit(lambda r: nn.unbox(state_lib.make_state_init(model, optimizer, s, p)(r, imp0)))

  sched = config_lib.apply_variant(config.copy_and_resolve_references(), "loss_ema+schedule")
  stages = step_plan.keep_stages(sched)
  base = dict(special_ids=synthetic.SPECIAL_IDS, ema_beta=td.ema_beta)
  variants = {  # name -> (settings, analytic step FLOPs)
      "full": (step_lib.DropSettings("loss_ema", None, **base), flops.train_step_flops(cfg, b, s, p)),
      "drop": (step_lib.DropSettings("loss_ema", td.keep_tokens, **base),
               flops.train_step_flops(cfg, b, s, p, td.keep_tokens)),
      "drop_sctd": (step_lib.DropSettings("loss_ema", td.keep_tokens, consistency_weight=1.0, **base),
                    flops.train_step_flops(cfg, b, s, p, td.keep_tokens, consistency=True)),
      "drop_random": (step_lib.DropSettings("random", td.keep_tokens, **base),
                      flops.train_step_flops(cfg, b, s, p, td.keep_tokens)),
      "drop_layerwise": (step_lib.DropSettings("random", td.keep_tokens, layerwise=True, **base),
                         flops.train_step_flops(cfg, b, s, p, td.keep_tokens, layerwise=True)),
  }
  for k in stages:
    if k != td.keep_tokens:
      variants[f"keep_{k}"] = (step_lib.DropSettings("loss_ema", k, **base),
                               flops.train_step_flops(cfg, b, s, p, k))
  steps_fn = {name: jax.jit(step_lib.make_train_step(model, optimizer, schedule, st),
                            donate_argnums=0) for name, (st, _) in variants.items()}
  states = {name: init(jax.random.PRNGKey(0)) for name in steps_fn}
  times, compile_s = benchmark.time_steps(steps_fn, states, batch, _STEPS.value, _WARMUP.value)
  med = {k: statistics.median(v) for k, v in times.items()}
  full_s, full_f = med["full"], variants["full"][1]
  per_step = {k: {"median_s": med[k], "measured_ratio": med[k] / full_s,
                  "flops_ratio": variants[k][1] / full_f} for k in med}

  def stage_name(k):
    return "drop" if k == td.keep_tokens else f"keep_{k}"

  every = td.consistency_every
  n = config.train.num_steps  # the schedule's share of each stage, from step_plan itself
  counts = {}
  for step in range(n):
    kind = step_plan.kind_at(sched, step)
    name = "full" if kind.full else stage_name(kind.keep_tokens)
    counts[name] = counts.get(name, 0) + 1
  run_average = {
      "paper": {"measured_ratio": per_step["drop"]["measured_ratio"],
                "flops_ratio": per_step["drop"]["flops_ratio"]},
      f"sctd_every_{every}": {
          key: ((every - 1) * per_step["drop"][key] + per_step["drop_sctd"][key]) / every
          for key in ("measured_ratio", "flops_ratio")},
      "layerwise": {key: per_step["drop_layerwise"][key] for key in ("measured_ratio", "flops_ratio")},
      "schedule": {key: sum(c * per_step[name][key] for name, c in counts.items()) / n
                   for key in ("measured_ratio", "flops_ratio")},
  }
  results = {"config": config.name, "batch_size": b, "seq_len": s, "keep_tokens": td.keep_tokens,
             "schedule_stages": stages, "schedule_steps": counts, "per_step": per_step,
             "run_average": run_average, "step_times_s": times, "compile_s": compile_s,
             "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count()}
  for name, r in per_step.items():
    print(f"{name:15s} {r['median_s']:.3f} s/step  measured {r['measured_ratio']:.3f}  "
          f"FLOPs {r['flops_ratio']:.3f}")
  for name, r in run_average.items():
    print(f"run average {name:14s} measured {r['measured_ratio']:.3f}  FLOPs {r['flops_ratio']:.3f}")
  os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
  with open(_OUTPUT.value, "w") as f:
    json.dump(results, f, indent=2)
  print(f"wrote {_OUTPUT.value}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
