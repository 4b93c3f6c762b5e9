"""Pretrain a BERT with token dropping.

  python -m tokendrop_jax.train --config=configs/bert_base.py:loss_ema --workdir=DIR \
      [--config.train.num_steps=1000 ...]

The same command runs on one CPU, a GPU node or every host of a TPU pod (see
launch/). WORKDIR receives checkpoints/, metrics.jsonl, tensorboard/, plots/,
the tokenizer and the dataset; restarting with the same WORKDIR resumes.
Without --config, the run's own WORKDIR/config.json is used (a resumed run, or
a workdir written by `python -m tokendrop_jax.import_hf`).
"""
from __future__ import annotations

from absl import app, flags

from tokendrop_jax import cli, files

_FLAGS = cli.define_run_flags(
    "configs/x.py[:variant]; default: WORKDIR/config.json (resume, or an import)",
    "Where checkpoints, metrics and plots go.")


def main(argv):
  cli.start_main(argv, _FLAGS)
  from tokendrop_jax.training import loop, workdir as workdir_lib

  def train():
    config = _FLAGS.config.value
    if config is None:  # the run's own config (names a missing workdir or config.json)
      config = workdir_lib.read_config(files.resolve(_FLAGS.workdir.value))
    return loop.train_and_evaluate(config, _FLAGS.workdir.value,
                                   allow_changes=_FLAGS.allow_change.value)

  summary = cli.run_or_exit(train)
  import jax
  if jax.process_index() == 0:
    workdir = files.resolve(_FLAGS.workdir.value)
    line = f"done: step {summary['step']}, {summary['train_time_s']:.0f} s of training"
    if "eval/loss" in summary:
      line += (f", full-model eval loss {summary['eval/loss']:.3f}, "
               f"MLM accuracy {summary['eval/mlm_accuracy']:.3f}")
    print(line)
    tokenizer = files.basename(workdir_lib.tokenizer_path(workdir))  # .model or .json
    print(f"outputs in {workdir}: checkpoints/ metrics.jsonl tensorboard/ plots/loss.png "
          f"summary.json config.json {tokenizer}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
