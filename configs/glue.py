"""GLUE fine-tuning: `--config=configs/glue.py:<task>` with task one of
cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli.

  python -m tokendrop_jax.finetune --config=configs/glue.py:sst2 \
      --config.init_from=PRETRAIN_WORKDIR --workdir=DIR \
      [--config.data.train_file=train.tsv --config.optim.learning_rate=2e-5 ...]

The same sections as the pretraining configs (`model`, `data`, `optim`,
`train`, `mesh`; every field is in `tokendrop_jax/config_lib.py`). The model's
sizes come from PRETRAIN_WORKDIR/config.json; `model.*` sizes only apply to
random-init runs (`--config.init_from=''`, for tests and baselines), while
dropout, dtype and remat are fine-tuning's own.
"""
from tokendrop_jax import config_lib
from tokendrop_jax.data import glue


def get_config(arg=None):
  if not arg:
    raise ValueError("configs/glue.py needs a task: --config=configs/glue.py:<task> with "
                     f"<task> one of {', '.join(glue.TASKS)}")
  return config_lib.glue_config(glue.get_task(arg).name)  # ValueError naming the known tasks
