"""`python -m tokendrop_jax.train` with a test-only fault hook (tests/test_faults.py).

FAULT_SAVE_SLEEP_S=<s>: every checkpoint save sleeps <s> seconds while its
orbax tmp directory exists, so that a SIGKILL can land in the middle of a save.
"""
import os
import time

from absl import app, flags


def _slow_saves(seconds: float) -> None:
  import grain.checkpoint  # pylint: disable=g-import-not-at-top
  handler = grain.checkpoint.CheckpointHandler
  save = handler.save

  def slow_save(self, directory, *args, **kwargs):
    time.sleep(seconds)  # the step's tmp dir exists and holds a partial state
    return save(self, directory, *args, **kwargs)

  handler.save = slow_save


if __name__ == "__main__":
  if os.environ.get("FAULT_SAVE_SLEEP_S"):
    _slow_saves(float(os.environ["FAULT_SAVE_SLEEP_S"]))
  from tokendrop_jax import train  # pylint: disable=g-import-not-at-top
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(train.main)
