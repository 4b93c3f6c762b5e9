"""Jobs that run alike in the pytest process (1 process x 8 devices) and in workers.

A job is a dict:
  kind          "pretrain" (tiny) or "finetune" (the synthetic task of test_finetune)
  workdir       where it writes
  fields        {"dotted.config.field": value} overrides
  device_order  optional permutation of jax.devices() to build the mesh from
  stop_at       optional step at which a simulated preemption (SIGTERM) stops the run
  files         finetune: {"train_file": ..., "eval_file": ..., "predict_file": ...}
  tokenizer     finetune: a SentencePiece model
"""
from __future__ import annotations

import jax

from tests.test_config import load
from tests.test_finetune import random_init_config, set_fields
from tokendrop_jax.training import finetune_loop, loop, preemption


def finetune_config(tokenizer, files, fields=None):
  """test_finetune's random-init synthetic-task config, one epoch."""
  return random_init_config(tokenizer, files,
                            {"train.num_epochs": 1, "train.log_every": 2, **(fields or {})})


def run_job(job: dict) -> dict:
  devices = None
  if job.get("device_order"):
    devices = [jax.devices()[i] for i in job["device_order"]]
  real_guard = preemption.PreemptionGuard
  if job.get("stop_at"):
    stop_at = job["stop_at"]

    class StopAt(real_guard):
      def should_stop(self, step):
        return step == stop_at or super().should_stop(step)
    preemption.PreemptionGuard = StopAt
  try:
    if job["kind"] == "pretrain":
      config = set_fields(load("tiny"), job["fields"])
      return loop.train_and_evaluate(config, job["workdir"], devices=devices)
    config = finetune_config(job["tokenizer"], job["files"], job["fields"])
    return finetune_loop.train_and_evaluate(config, job["workdir"], devices=devices)
  finally:
    preemption.PreemptionGuard = real_guard
