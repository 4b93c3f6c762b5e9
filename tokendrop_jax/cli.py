"""What the mains share: one mapping from failures to messages and exit codes.

  2  bad input (the message names the config field or the file)
  3  the loss went NaN/Inf (the last good checkpoint is kept)
  4  a checkpoint could not be written (disk full, read-only workdir)
  5  a step does not fit the chip (tokendrop_jax.compile)
  6  no checkpoint of the workdir could be read (nothing was changed)

Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from typing import Callable, Mapping, Sequence, TypeVar

T = TypeVar("T")

EXIT_BAD_INPUT, EXIT_NONFINITE, EXIT_SAVE_FAILED, EXIT_NO_CHECKPOINT = 2, 3, 4, 6


def run_or_exit(fn: Callable[[], T]) -> T:
  """Runs `fn`; on a known failure prints `error: ...` to stderr and exits with its code."""
  from tokendrop_jax.training import checkpoint, runner  # pylint: disable=import-outside-toplevel
  codes = ((runner.NonFiniteLossError, EXIT_NONFINITE),
           (checkpoint.CheckpointSaveError, EXIT_SAVE_FAILED),
           (checkpoint.NoReadableCheckpointError, EXIT_NO_CHECKPOINT),
           ((ValueError, FileNotFoundError), EXIT_BAD_INPUT))
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    for kind, code in codes:
      if isinstance(e, kind):
        print(f"error: {e}", file=sys.stderr)
        sys.exit(code)
    raise


def define_platform_flag():
  """`--platform`: the accelerator the run expects (accelerator.check); the launchers set it."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from tokendrop_jax import accelerator  # pylint: disable=import-outside-toplevel
  return flags.DEFINE_enum(
      "platform", "any", accelerator.PLATFORMS,
      "The backend this run must get (tpu, gpu, cpu); stops at once, naming the install "
      "command, when JAX starts another. 'any': whatever JAX finds.")


def define_allow_change_flag():
  """`--allow_change`: the fields a resume may change (training/resume_fields.py)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  return flags.DEFINE_list(
      "allow_change", [], "Config fields (or sections) a resume may change from the run's "
      "own, e.g. optim.learning_rate,data.global_batch_size; each change is appended to "
      "WORKDIR/config_changes.jsonl with the step. Others are refused.")


def start_platform(expected: str) -> None:
  """jax.distributed (multi-process launches), then the platform check, before any work;
  a wrong platform exits 2 with the message."""
  from tokendrop_jax import accelerator  # pylint: disable=import-outside-toplevel
  from tokendrop_jax.training import sharding  # pylint: disable=import-outside-toplevel
  distributed = sharding.maybe_initialize_distributed()
  run_or_exit(lambda: accelerator.start(expected, distributed))


def refuse_renamed_flags(argv: Sequence[str], renamed: Mapping[str, str]) -> None:
  """Exits 2 on a `--config.<old name>` flag, naming the new field (absl would only
  say the attribute does not exist)."""
  for arg in argv[1:]:
    if arg.startswith("--config."):
      name = arg[len("--config."):].split("=", 1)[0]
      if name in renamed:
        print(f"error: --config.{name} is now --config.{renamed[name]} (configs/glue.py has "
              "the sections of the pretraining configs)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
