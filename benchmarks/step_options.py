"""What each option of the train step costs per step: kernel options, and token-drop options.

  .venv/bin/python benchmarks/step_options.py [--set=kernel|token_drop] \
      [--config=configs/bench_cpu.py] [--rows=a,b] [--steps=N] [--output=FILE.json] [--smoke]

Each set's steps are compiled, then all timed alternately on one synthetic batch
(`tokendrop_jax.benchmark.time_steps`), so the machine's noise hits them alike;
medians and ratios are reported.

--set=kernel (default; benchmarks/results/step_options_cpu.json, 8 timed steps
after 2): each row changes one option from the config's defaults (einsum
attention, threefry, no remat, unrolled layers) and times its full and its
token-drop step; ratios to the default row. The fused kernels have no attention
dropout, so `xla` is compared with `einsum_no_attention_dropout`, the einsum
kernel under the same setting; `no_dropout` (no hidden dropout either) says what
all of dropout's random bits cost. `cudnn` and `splash` need a GPU or a TPU
(benchmarks/accelerator.sh measures them there). --rows picks rows (`default` is
always run).

--set=token_drop (benchmarks/results/options_speed.json, 10 timed steps after 3): every step
kind of the options beyond the paper, from the config as it is:
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

--smoke: configs/tiny.py, 1 timed step (the test suite runs both sets).
"""
from __future__ import annotations

import dataclasses
import os
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# set -> (default --output, default --steps, default --warmup)
SETS = {"kernel": ("benchmarks/results/step_options_cpu.json", 8, 2),
        "token_drop": ("benchmarks/results/options_speed.json", 10, 3)}

_SET = flags.DEFINE_enum("set", "kernel", list(SETS), "Which options to time.")
_CONFIG = flags.DEFINE_string("config", "configs/bench_cpu.py", "configs/x.py")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path (default: the set's, above).")
_STEPS = flags.DEFINE_integer("steps", None, "Timed steps per step (default: the set's).")
_WARMUP = flags.DEFINE_integer("warmup", None, "Untimed steps after compiling (default: the "
                               "set's).")
_SMOKE = flags.DEFINE_bool("smoke", False, "configs/tiny.py, 1 timed step.")
_ROWS = flags.DEFINE_list("rows", [], "--set=kernel: only these rows (default: all; `default` "
                          "is always run).")

# kernel row -> the config fields it changes from the defaults.
ROWS = {
    "default": {},
    "prng_rbg": {"train.prng_impl": "rbg"},
    "prng_unsafe_rbg": {"train.prng_impl": "unsafe_rbg"},
    "remat_full": {"model.remat": "full"},
    "remat_dots": {"model.remat": "dots"},
    "remat_dots_no_batch": {"model.remat": "dots_no_batch"},
    "einsum_no_attention_dropout": {"model.attention_dropout_rate": 0.0},
    "xla": {"model.attention": "xla", "model.attention_dropout_rate": 0.0},
    "no_dropout": {"model.dropout_rate": 0.0, "model.attention_dropout_rate": 0.0},
    "scan_layers": {"model.scan_layers": True},
}


def row_config(base, changes: dict):
  config = base.copy_and_resolve_references()
  config.model.update(attention="einsum", remat="none", scan_layers=False)
  config.train.prng_impl = "threefry"
  for field, value in changes.items():
    section, name = field.split(".")
    config[section][name] = value
  return config


def kernel_set(base, rows: list[str], steps: int, warmup: int) -> dict:
  """Each row's full and drop step, all interleaved; `rows` from ROWS."""
  from tokendrop_jax import benchmark
  fns, states, batch = {}, {}, None
  for row in rows:
    bench = benchmark.setup(row_config(base, ROWS[row]))
    batch = bench.batch  # the same synthetic batch for every row (seed 0, same sizes)
    row_fns, row_states = bench.contenders(bench.kinds())
    fns.update({(row, kind): fn for kind, fn in row_fns.items()})
    states.update({(row, kind): state for kind, state in row_states.items()})
  times, compile_s = benchmark.time_steps(fns, states, batch, steps, warmup)
  med = benchmark.medians(times)
  out = {}
  for row in rows:
    full, drop = med[(row, "full")], med[(row, "drop")]
    out[row] = {"changes": ROWS[row], "full_step_s": full, "drop_step_s": drop,
                "full_over_default": full / med[("default", "full")],
                "drop_over_full": drop / full,
                "compile_s": {k: compile_s[(row, k)] for k in ("full", "drop")},
                "full_step_times_s": times[(row, "full")],
                "drop_step_times_s": times[(row, "drop")]}
    print(f"{row:28s} full {full:.3f} s ({out[row]['full_over_default']:.3f} of default)  "
          f"drop {drop:.3f} s (drop/full {out[row]['drop_over_full']:.3f})")
  return {"rows": out}


def token_drop_set(config, steps: int, warmup: int) -> dict:
  """Every step kind of the options beyond the paper, and their run averages."""
  from tokendrop_jax import benchmark, config_lib
  from tokendrop_jax.training import step_plan
  bench = benchmark.setup(config)
  td, drop = config.token_drop, bench.settings  # drop: loss_ema at keep_tokens
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
  times, compile_s = bench.time({name: s for name, (s, _) in variants.items()}, steps, warmup)
  med = benchmark.medians(times)
  measured = benchmark.ratios(med, "full")
  flops = benchmark.ratios({name: f for name, (_, f) in variants.items()}, "full")
  per_step = {k: {"median_s": med[k], "measured_ratio": measured[k], "flops_ratio": flops[k]}
              for k in variants}

  every, n = td.consistency_every, config.train.num_steps
  counts = {("full" if kind.full else "drop" if kind.keep_tokens == td.keep_tokens
             else f"keep_{kind.keep_tokens}"): c
            for kind, c in step_plan.kind_counts(sched).items()}
  keys = ("measured_ratio", "flops_ratio")
  every_nth = lambda name: {key: ((every - 1) * per_step["drop"][key] + per_step[name][key])  # noqa: E731
                            / every for key in keys}
  run_average = {
      "paper": {key: per_step["drop"][key] for key in keys},
      f"sctd_every_{every}": every_nth("drop_sctd"),
      f"sctd_paper_every_{every}": every_nth("drop_sctd_paper"),
      "layerwise": {key: per_step["drop_layerwise"][key] for key in keys},
      "schedule": {key: sum(c * per_step[name][key] for name, c in counts.items()) / n
                   for key in keys},
  }
  for name, r in per_step.items():
    print(f"{name:15s} {r['median_s']:.3f} s/step  measured {r['measured_ratio']:.3f}  "
          f"FLOPs {r['flops_ratio']:.3f}")
  for name, r in run_average.items():
    print(f"run average {name:14s} measured {r['measured_ratio']:.3f}  FLOPs {r['flops_ratio']:.3f}")
  return {"schedule_stages": stages, "schedule_steps": counts, "per_step": per_step,
          "run_average": run_average, "step_times_s": times, "compile_s": compile_s}


def main(argv):
  del argv
  from tokendrop_jax import benchmark, config_lib

  output, steps, warmup = SETS[_SET.value]
  if _SMOKE.value:
    steps, warmup = 1, 0
  else:
    steps = steps if _STEPS.value is None else _STEPS.value
    warmup = warmup if _WARMUP.value is None else _WARMUP.value
  base = config_lib.load_file(os.path.join(ROOT, "configs/tiny.py") if _SMOKE.value
                              else _CONFIG.value)
  unknown = sorted(set(_ROWS.value) - set(ROWS))
  if unknown:
    raise app.UsageError(f"--rows: unknown row(s) {unknown}; expected some of {list(ROWS)}")
  if _ROWS.value and _SET.value != "kernel":
    raise app.UsageError("--rows: only --set=kernel has rows to choose")
  d = base.data
  results = {"config": base.name, "batch_size": d.global_batch_size, "seq_len": d.seq_len,
             "keep_tokens": base.token_drop.keep_tokens, "steps": steps, "warmup": warmup,
             "smoke": _SMOKE.value}
  if _SET.value == "kernel":
    rows = [r for r in ROWS if r == "default" or not _ROWS.value or r in _ROWS.value]
    results.update(kernel_set(base, rows, steps, warmup))
  else:
    results.update(token_drop_set(base, steps, warmup))
  benchmark.write_results(results, _OUTPUT.value or output)


if __name__ == "__main__":
  app.run(main)
