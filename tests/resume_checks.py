"""What the stop-and-resume tests share: a SIGTERM once a run is training, the state
it ends with, and the losses it logged (workdirs local or gs://, through `files`)."""
import json
import os
import signal
import threading
import time

import jax

from tokendrop_jax import files, synthetic
from tokendrop_jax.training import checkpoint, loop


def sigterm_once_training(workdir: str) -> list:
  """Sends this process SIGTERM as soon as `workdir` has logged a metric (from a thread).
  Returns a list that gets True once the signal was sent."""
  sent = []

  def preempt_when_running():
    path = os.path.join(workdir, "metrics.jsonl")
    while not (os.path.exists(path) and os.path.getsize(path) > 0):
      time.sleep(0.01)
    sent.append(True)
    os.kill(os.getpid(), signal.SIGTERM)

  threading.Thread(target=preempt_when_running, daemon=True).start()
  return sent


def final_state(config, workdir, special_ids=synthetic.SPECIAL_IDS):
  """(host copy of the newest checkpointed train state, its step)."""
  run = loop.build(config, special_ids)
  ckpt = checkpoint.Checkpointer(files.join(workdir, "checkpoints"), save_every=1, keep=0)
  try:
    state, step = ckpt.restore(run.layout.abstract)
  finally:
    ckpt.close()
  return jax.device_get(state), step


def losses(workdir):
  """{step: loss} of the training rows of metrics.jsonl."""
  with files.open(files.join(workdir, "metrics.jsonl")) as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}
