"""GLUE fine-tuning: `--config=configs/glue.py:<task>` with task one of
cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli.

  python -m tokendrop_jax.finetune --config=configs/glue.py:sst2 \
      --config.init_from=PRETRAIN_WORKDIR --workdir=DIR

The model's sizes come from PRETRAIN_WORKDIR/config.json; `model.*` here only
applies to random-init runs (`--config.init_from=''`, for tests and baselines).
"""
import dataclasses

import ml_collections
from ml_collections import config_dict

from tokendrop_jax import config_lib
from tokendrop_jax.data import glue
from tokendrop_jax.model.bert import BertConfig


def get_config(arg=None):
  if not arg:
    raise ValueError("configs/glue.py needs a task: --config=configs/glue.py:<task> with "
                     f"<task> one of {', '.join(glue.TASKS)}")
  task = glue.get_task(arg).name  # ValueError naming the known tasks
  c = ml_collections.ConfigDict()
  c.name = f"glue_{task}"
  c.task = task
  # Pretraining workdir (config.json, tokenizer.model, checkpoints/). Required;
  # '' means a randomly initialised encoder of size `model.*` (tests, baselines).
  c.init_from = config_dict.placeholder(str)
  c.init_step = config_dict.placeholder(int)  # None = the latest checkpoint
  c.tokenizer_model = ""       # '' = INIT_FROM/tokenizer.model (required for random init)
  # GLUE TSVs; empty = TFDS glue/<task> (prepared as array_record in tfds_data_dir).
  c.train_file = ""
  c.eval_file = ""
  c.eval_mismatched_file = ""  # MNLI only: dev_mismatched.tsv
  c.predict_file = ""          # -> WORKDIR/predictions.tsv (labels ignored if present)
  c.tfds_data_dir = ""
  c.max_seq_len = 128
  c.batch_size = 32            # global; the last batch of an epoch is padded (weight 0)
  c.eval_batch_size = 0        # 0 = batch_size
  c.learning_rate = 3e-5
  c.num_epochs = 3
  c.warmup_fraction = 0.1
  c.weight_decay = 0.01
  c.grad_clip_norm = 1.0
  c.adam_b1 = 0.9
  c.adam_b2 = 0.999
  c.adam_eps = 1e-6
  c.dropout_rate = 0.1
  c.attention_dropout_rate = 0.1
  c.dtype = ""                 # compute dtype; '' = the pretraining run's
  c.seed = 0                   # classifier init, dropout and the per-epoch shuffles
  c.log_every = 50
  c.checkpoint_every = 1000
  c.keep_checkpoints = 2
  c.async_checkpoint = True
  c.mesh = config_lib.base_config().mesh
  c.model = ml_collections.ConfigDict(dataclasses.asdict(BertConfig()))
  return c
