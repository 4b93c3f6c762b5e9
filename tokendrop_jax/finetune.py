"""Fine-tune a pretrained encoder on a GLUE task.

  python -m tokendrop_jax.finetune --config=configs/glue.py:sst2 \
      --config.init_from=PRETRAIN_WORKDIR --workdir=DIR \
      [--config.data.train_file=train.tsv --config.data.eval_file=dev.tsv] \
      [--config.data.predict_file=test.tsv]

Without data.train_file/eval_file the task is read from TFDS `glue/<task>`
(prepared as array_record). DIR receives results.json (best and last dev
metrics, per epoch), metrics.jsonl, tensorboard/, checkpoints/ and, with
data.predict_file, predictions.tsv. Restarting with the same DIR resumes exactly.
"""
from __future__ import annotations

import sys

from absl import app, flags

from tokendrop_jax import cli, files

_FLAGS = cli.define_run_flags("configs/glue.py:<task>", "Where results, checkpoints and metrics go.")


def main(argv):
  cli.start_main(argv, _FLAGS)
  from tokendrop_jax.training import finetune_loop
  summary = cli.run_or_exit(
      lambda: finetune_loop.train_and_evaluate(_FLAGS.config.value, _FLAGS.workdir.value,
                                                 allow_changes=_FLAGS.allow_change.value))
  import jax
  if jax.process_index() == 0 and "results" in summary:
    r = summary["results"]
    workdir = files.resolve(_FLAGS.workdir.value)
    print(f"done at step {summary['step']}: best dev {r['best']}, last dev {r['last']}")
    print(f"outputs in {workdir}: results.json, metrics.jsonl, tensorboard/, checkpoints/"
          + (", predictions.tsv" if "predictions" in summary else ""))


if __name__ == "__main__":
  from tokendrop_jax import config_checks
  cli.refuse_renamed_flags(sys.argv, config_checks.GLUE_RENAMED)
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
