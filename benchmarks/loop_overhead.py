"""What the host loop adds over the bare jitted step, for pretraining and fine-tuning.

  .venv/bin/python benchmarks/loop_overhead.py [--config=configs/demo.py] [--steps=200] \
      [--finetune_examples=4000] [--output=benchmarks/results/loop_overhead.json]

In one process, each job against its own bare step:
- pretraining: (1) the bare token-drop step of the config on a fixed batch
  (`tokendrop_jax.benchmark`, median of timed steps); (2) the real loop
  (`train_and_evaluate`: grain pipeline, metrics a step late, async
  checkpoints every 50 steps) for `--steps` steps in a fresh workdir on the
  built-in corpus.
- fine-tuning (SST-2 layout, from that pretraining run): (1) the bare jitted
  fine-tuning step on a fixed batch; (2) the real loop (host batches, metrics
  a step late, a checkpoint every 50 steps, dev evaluation at the epoch end)
  for one epoch of `--finetune_examples` sentences of the built-in corpus
  with alternating labels (the step's cost does not depend on the labels).
The loop's per-step time is the median over logging windows after the first
(which holds the compile); both loops exclude evaluation from step time. Each
bare step is timed right before and right after its loop, and their mean is
the reference, so that a drift of the shared machine during the loop hits
both sides alike. Reports loop / bare for each.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config file.")
_STEPS = flags.DEFINE_integer("steps", 200, "Pretraining loop steps.")
_FT_EXAMPLES = flags.DEFINE_integer("finetune_examples", 4000,
                                    "Fine-tuning examples (one epoch).")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/loop_overhead.json", "JSON path.")


def _window_step_times(workdir):
  from tokendrop_jax.training import metrics
  return [r["step_time_s"] for r in metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
          if "step_time_s" in r]


def _write_task(corpus_train: str, path: str, n: int) -> None:
  """n sentences of the corpus in GLUE SST-2's TSV layout, labels alternating."""
  with open(corpus_train, encoding="utf-8") as f:
    sentences = [s.strip().replace("\t", " ") for s in f if len(s.split()) >= 4][:n]
  with open(path, "w", encoding="utf-8") as f:
    f.write("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(sentences)))


def _bare_finetune_step(config, steps: int, warmup: int) -> float:
  """Median seconds of the jitted fine-tuning step on one fixed batch."""
  import numpy as np

  from tokendrop_jax import benchmark
  from tokendrop_jax.data import glue, glue_batches
  from tokendrop_jax.training import finetune_loop, host_rows, pretrained

  spec = glue.get_task(config.task)
  init = pretrained.resolve_init(config)
  data = glue_batches.load_data(glue_batches.GlueFiles.of(config.data), spec, init.tokenizer)
  run = finetune_loop.build(config, spec, init.model_cfg, len(data.train["input_ids"]))
  rows, weights = glue_batches.batch_rows(np.arange(len(data.train["input_ids"])), 0,
                                          config.data.global_batch_size)
  batch = host_rows.from_global(glue_batches.global_batch(data.train, rows, weights),
                                run.layout.mesh)
  times, _ = benchmark.time_steps({"finetune": run.train_step},
                                  {"finetune": run.init_state(None)}, batch, steps, warmup)
  return benchmark.medians(times)["finetune"]


def main(argv):
  del argv
  from tokendrop_jax import benchmark, config_lib
  from tokendrop_jax.training import finetune_loop, loop, workdir as workdir_lib

  config = _CONFIG.value
  bare_before = benchmark.run_benchmark(config, steps=10, warmup=5)["drop_step_s"]
  config.train.update(num_steps=_STEPS.value, log_every=10, eval_every=10 * _STEPS.value,
                      checkpoint_every=50, eval_batches=1)
  with tempfile.TemporaryDirectory() as root:
    pre_dir, ft_dir = os.path.join(root, "pretrain"), os.path.join(root, "finetune")
    loop.train_and_evaluate(config, pre_dir)
    pre_windows = _window_step_times(pre_dir)
    bare_after = benchmark.run_benchmark(config, steps=10, warmup=5)["drop_step_s"]

    task = os.path.join(root, "task.tsv")
    _write_task(os.path.join(pre_dir, workdir_lib.CORPUS_DIR, "train.txt"), task,
                _FT_EXAMPLES.value)
    ft = config_lib.glue_config("sst2")  # what configs/glue.py:sst2 gives
    ft.init_from = pre_dir
    ft.data.update(train_file=task, eval_file=task, seq_len=config.data.seq_len)
    ft.train.update(num_epochs=1, log_every=10, checkpoint_every=50)
    bare_ft_before = _bare_finetune_step(ft, steps=10, warmup=5)
    finetune_loop.train_and_evaluate(ft, ft_dir)
    ft_windows = _window_step_times(ft_dir)
    bare_ft_after = _bare_finetune_step(ft, steps=10, warmup=5)

  loop_step, ft_step = statistics.median(pre_windows[1:]), statistics.median(ft_windows[1:])
  bare, bare_ft = (bare_before + bare_after) / 2, (bare_ft_before + bare_ft_after) / 2
  results = {"config": config.name, "steps": _STEPS.value,
             "bare_drop_step_s": bare, "bare_drop_step_before_after_s": [bare_before, bare_after],
             "loop_step_s": loop_step, "loop_over_bare": loop_step / bare,
             "finetune_examples": _FT_EXAMPLES.value,
             "finetune_batch": ft.data.global_batch_size, "finetune_seq_len": ft.data.seq_len,
             "bare_finetune_step_s": bare_ft,
             "bare_finetune_step_before_after_s": [bare_ft_before, bare_ft_after],
             "finetune_loop_step_s": ft_step, "finetune_loop_over_bare": ft_step / bare_ft,
             "loop_windows_step_s": pre_windows, "finetune_windows_step_s": ft_windows}
  print(json.dumps({k: v for k, v in results.items() if "windows" not in k}, indent=2))
  benchmark.write_results(results, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
