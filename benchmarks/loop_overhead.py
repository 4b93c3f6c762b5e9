"""What the train loop adds over the bare jitted step (input, metrics, checkpoints).

  .venv/bin/python benchmarks/loop_overhead.py [--config=configs/demo.py] [--steps=200] \
      [--output=benchmarks/results/loop_overhead.json]

In one process: (1) the bare token-drop step of the config on a fixed batch
(`tokendrop_jax.benchmark`, median of timed steps); (2) the real loop
(`train_and_evaluate`: grain pipeline, metrics a step late, async checkpoints
every 50 steps) for `--steps` steps in a fresh workdir on the built-in corpus;
its per-step time is the median over logging windows after the first (which
holds the compile). Reports loop / bare.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config file.")
_STEPS = flags.DEFINE_integer("steps", 200, "Loop steps.")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/loop_overhead.json", "JSON path.")


def main(argv):
  del argv
  from tokendrop_jax import benchmark
  from tokendrop_jax.training import loop, metrics

  config = _CONFIG.value
  bare = benchmark.run_benchmark(config, steps=10, warmup=5)
  config.train.update(num_steps=_STEPS.value, log_every=10, eval_every=10 * _STEPS.value,
                      checkpoint_every=50, eval_batches=1)
  with tempfile.TemporaryDirectory() as workdir:
    loop.train_and_evaluate(config, workdir)
    rows = [r for r in metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
            if "step_time_s" in r]
  loop_step = statistics.median(r["step_time_s"] for r in rows[1:])
  results = {"config": config.name, "bare_drop_step_s": bare["drop_step_s"],
             "loop_step_s": loop_step, "loop_over_bare": loop_step / bare["drop_step_s"],
             "loop_windows_step_s": [r["step_time_s"] for r in rows], "steps": _STEPS.value}
  print(json.dumps({k: v for k, v in results.items() if k != "loop_windows_step_s"}, indent=2))
  benchmark.write_results(results, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
