"""What the model's kernel options cost per step here: attention kernel, PRNG, remat policy.

  .venv/bin/python benchmarks/step_options.py [--config=configs/bench_cpu.py] \
      [--output=benchmarks/results/step_options_cpu.json] [--smoke]

Each row changes one option from the config's defaults (einsum attention, threefry,
no remat, unrolled layers); the full and the token-drop train step of every row are compiled, then
all timed alternately on one synthetic batch (`tokendrop_jax.benchmark.time_steps`),
so the machine's noise hits every row alike; medians and ratios to the default row
are reported. The fused kernels have no attention dropout, so `xla` is compared with
`einsum_no_attention_dropout`, the einsum kernel under the same setting; `no_dropout`
(no hidden dropout either) says what all of dropout's random bits cost. `cudnn` and
`splash` need a GPU or a TPU (benchmarks/accelerator.sh measures them there).

--smoke: configs/tiny.py, 1 timed step (the test suite runs it with two rows).
"""
from __future__ import annotations

import os
import statistics
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_CONFIG = flags.DEFINE_string("config", "configs/bench_cpu.py", "configs/x.py")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/step_options_cpu.json", "JSON path.")
_STEPS = flags.DEFINE_integer("steps", 8, "Timed steps per row and step kind.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
_SMOKE = flags.DEFINE_bool("smoke", False, "configs/tiny.py, 1 timed step.")
_ROWS = flags.DEFINE_list("rows", [], "Only these rows (default: all; `default` is always run).")

# row -> the config fields it changes from the defaults.
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


def main(argv):
  del argv
  import jax

  from tokendrop_jax import benchmark, config_lib

  path = os.path.join(ROOT, "configs/tiny.py") if _SMOKE.value else _CONFIG.value
  steps, warmup = (1, 0) if _SMOKE.value else (_STEPS.value, _WARMUP.value)
  base = config_lib.load_file(path)
  unknown = sorted(set(_ROWS.value) - set(ROWS))
  if unknown:
    raise app.UsageError(f"--rows: unknown row(s) {unknown}; expected some of {list(ROWS)}")
  chosen = {r: c for r, c in ROWS.items() if r == "default" or not _ROWS.value or r in _ROWS.value}
  steps_fn, states, batch = {}, {}, None
  for row, changes in chosen.items():
    bench = benchmark.setup(row_config(base, changes))
    batch = bench.batch  # the same synthetic batch for every row (seed 0, same sizes)
    for kind, settings in (("full", bench.settings.full()), ("drop", bench.settings)):
      steps_fn[(row, kind)] = bench.jit_step(settings)
      states[(row, kind)] = bench.init(bench.key(0))
  times, compile_s = benchmark.time_steps(steps_fn, states, batch, steps, warmup)
  med = {key: statistics.median(t) for key, t in times.items()}
  rows = {}
  for row, changes in chosen.items():
    full, drop = med[(row, "full")], med[(row, "drop")]
    rows[row] = {"changes": changes, "full_step_s": full, "drop_step_s": drop,
                 "full_over_default": full / med[("default", "full")],
                 "drop_over_full": drop / full,
                 "compile_s": {k: compile_s[(row, k)] for k in ("full", "drop")},
                 "full_step_times_s": times[(row, "full")],
                 "drop_step_times_s": times[(row, "drop")]}
    print(f"{row:28s} full {full:.3f} s ({rows[row]['full_over_default']:.3f} of default)  "
          f"drop {drop:.3f} s (drop/full {rows[row]['drop_over_full']:.3f})")
  d = base.data
  results = {"config": base.name, "batch_size": d.global_batch_size, "seq_len": d.seq_len,
             "keep_tokens": base.token_drop.keep_tokens, "steps": steps, "warmup": warmup,
             "smoke": _SMOKE.value, "rows": rows, "device": jax.devices()[0].device_kind,
             "jax_version": jax.__version__, "cpu_count": os.cpu_count(),
             "xla_flags": os.environ.get("XLA_FLAGS", "")}
  benchmark.write_results(results, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
