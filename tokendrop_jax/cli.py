"""What the mains share: one mapping from failures to messages and exit codes.

  2  bad input (the message names the config field or the file)
  3  the loss went NaN/Inf (the last good checkpoint is kept)
  4  a checkpoint could not be written (disk full, read-only workdir)
  5  a step does not fit the chip (tokendrop_jax.compile)
  6  no checkpoint of the workdir could be read (nothing was changed)

Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Mapping, Sequence, TypeVar

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


@dataclasses.dataclass(frozen=True)
class RunFlags:
  """The flags of a training main (train, finetune): their absl holders."""
  config: Any
  platform: Any
  allow_change: Any
  workdir: Any


def define_run_flags(config_help: str, workdir_help: str) -> RunFlags:
  """--config, --platform, --allow_change and --workdir, as every training main takes them."""
  # pylint: disable=import-outside-toplevel
  from absl import flags
  from ml_collections import config_flags

  from tokendrop_jax import accelerator
  return RunFlags(
      config=config_flags.DEFINE_config_file("config", None, config_help),
      platform=flags.DEFINE_enum(
          "platform", "any", accelerator.PLATFORMS,
          "The backend this run must get (tpu, gpu, cpu); stops at once, naming the install "
          "command, when JAX starts another. 'any': whatever JAX finds."),
      allow_change=flags.DEFINE_list(
          "allow_change", [], "Config fields (or sections) a resume may change from the run's "
          "own, e.g. optim.learning_rate,data.global_batch_size; each change is appended to "
          "WORKDIR/config_changes.jsonl with the step. Others are refused."),
      workdir=flags.DEFINE_string("workdir", None, workdir_help))


def start_main(argv: Sequence[str], run_flags: RunFlags) -> None:
  """Before any work: no stray arguments, jax.distributed (multi-process launches), the
  platform check (a wrong platform exits 2 with the message), quiet library logs."""
  # pylint: disable=import-outside-toplevel
  from absl import app, logging

  from tokendrop_jax import accelerator
  from tokendrop_jax.training import sharding
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  distributed = sharding.maybe_initialize_distributed()
  run_or_exit(lambda: accelerator.start(run_flags.platform.value, distributed))
  logging.set_verbosity(logging.WARNING)


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
