"""What the options beyond the paper cost per step: ScTD, keep schedule, layer-wise.

  .venv/bin/python benchmarks/options_speed.py --config=configs/bench_cpu.py \
      [--output=benchmarks/results/options_speed.json]

Times, interleaved on one synthetic batch (median of --steps after --warmup):
  full               the plain model
  drop               the paper (loss_ema, keep_tokens)
  drop_sctd          a ScTD step: drop + the full model's [CLS] target forward
  drop_sctd_paper    the authors' ScTD step: + the full model's forward and backward
  drop_random_ties   drop with exact score ties broken at random (a second sort key)
  drop_layerwise     random-LTD: a random subset per middle layer (random)
  drop_random        the paper's split with random scores (layer-wise's baseline)
  keep_<k>           each stage of the default 4-stage keep schedule
and the run-average cost of each option against the full model: ScTD at
`consistency_every`, and the schedule's stages weighted by their steps (with
the full-sequence tail), next to the analytic FLOPs ratios.
"""
from __future__ import annotations

import dataclasses
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
  import jax

  from tokendrop_jax import benchmark, config_lib
  from tokendrop_jax.training import step_plan

  config = _CONFIG.value
  bench = benchmark.setup(config)
  td, drop = config.token_drop, bench.settings  # drop: loss_ema at keep_tokens
  b, s = config.data.global_batch_size, config.data.seq_len
  sched = config_lib.apply_variant(config.copy_and_resolve_references(), "loss_ema+schedule")
  stages = step_plan.keep_stages(sched)
  variants = {  # name -> (settings, analytic step FLOPs)
      "full": (drop.full(), bench.step_flops()),
      "drop": (drop, bench.step_flops(td.keep_tokens)),
      "drop_sctd": (dataclasses.replace(drop, consistency_weight=1.0),
                    bench.step_flops(td.keep_tokens, consistency=True)),
      "drop_sctd_paper": (dataclasses.replace(drop, consistency_weight=0.05,
                                              consistency_form="paper"),
                          bench.step_flops(td.keep_tokens, consistency=True,
                                           consistency_backward=True)),
      "drop_random_ties": (dataclasses.replace(drop, random_ties=True),
                           bench.step_flops(td.keep_tokens)),
      "drop_random": (dataclasses.replace(drop, strategy="random"), bench.step_flops(td.keep_tokens)),
      "drop_layerwise": (dataclasses.replace(drop, strategy="random", layerwise=True),
                         bench.step_flops(td.keep_tokens, layerwise=True)),
  }
  for k in stages:
    if k != td.keep_tokens:
      variants[f"keep_{k}"] = (dataclasses.replace(drop, keep_tokens=k), bench.step_flops(k))
  steps_fn = {name: bench.jit_step(st) for name, (st, _) in variants.items()}
  states = {name: bench.init(jax.random.PRNGKey(0)) for name in steps_fn}
  times, compile_s = benchmark.time_steps(steps_fn, states, bench.batch, _STEPS.value,
                                          _WARMUP.value)
  med = {k: statistics.median(v) for k, v in times.items()}
  full_s, full_f = med["full"], variants["full"][1]
  per_step = {k: {"median_s": med[k], "measured_ratio": med[k] / full_s,
                  "flops_ratio": variants[k][1] / full_f} for k in med}

  every = td.consistency_every
  n = config.train.num_steps
  counts = {("full" if kind.full else "drop" if kind.keep_tokens == td.keep_tokens
             else f"keep_{kind.keep_tokens}"): c
            for kind, c in step_plan.kind_counts(sched).items()}
  run_average = {
      "paper": {"measured_ratio": per_step["drop"]["measured_ratio"],
                "flops_ratio": per_step["drop"]["flops_ratio"]},
      f"sctd_every_{every}": {
          key: ((every - 1) * per_step["drop"][key] + per_step["drop_sctd"][key]) / every
          for key in ("measured_ratio", "flops_ratio")},
      f"sctd_paper_every_{every}": {
          key: ((every - 1) * per_step["drop"][key] + per_step["drop_sctd_paper"][key]) / every
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
  benchmark.write_results(results, _OUTPUT.value)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
