"""The mains' shared failure handling: one message, one exit code per kind of failure."""
import os
import subprocess
import sys

import pytest

from tokendrop_jax import cli
from tokendrop_jax.training import checkpoint, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("error,code", [
    (ValueError("token_drop.keep_tokens must be ..."), 2),
    (FileNotFoundError("no such file: train.tsv"), 2),
    (runner.NonFiniteLossError("loss is nan at step 7"), 3),
    (checkpoint.CheckpointSaveError("disk full"), 4),
])
def test_known_failures_exit_with_their_code(error, code, capsys):
  def fail():
    raise error

  with pytest.raises(SystemExit) as exit_info:
    cli.run_or_exit(fail)
  assert exit_info.value.code == code
  assert capsys.readouterr().err == f"error: {error}\n"


def test_bugs_keep_their_traceback_and_results_pass_through():
  with pytest.raises(KeyError):
    cli.run_or_exit(lambda: {}["missing"])
  assert cli.run_or_exit(lambda: 41 + 1) == 42


@pytest.mark.parametrize("main,config", [("train", "configs/tiny.py:loss_ema"),
                                         ("finetune", "configs/glue.py:sst2")])
def test_mains_exit_2_naming_the_field(main, config, tmp_path):
  field = ("--config.token_drop.keep_tokens=0" if main == "train"
           else "--config.optim.learning_rate=-1 --config.init_from=").split()
  proc = subprocess.run(
      [sys.executable, "-m", f"tokendrop_jax.{main}", f"--config={config}",
       f"--workdir={tmp_path / 'run'}", *field],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  name = "token_drop.keep_tokens" if main == "train" else "optim.learning_rate"
  assert proc.stderr.startswith("error: ") and name in proc.stderr, proc.stderr[-2000:]
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_finetune_main_names_the_new_field_of_an_old_flag(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "tokendrop_jax.finetune", "--config=configs/glue.py:sst2",
       f"--workdir={tmp_path / 'run'}", "--config.learning_rate=1e-3"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.startswith("error: --config.learning_rate is now --config.optim.learning_rate")
  assert not os.path.exists(tmp_path / "run")



_IMPORT_EVERY_MODULE = """
import importlib, pkgutil
from absl import flags
import tokendrop_jax
mains = ("tokendrop_jax.train", "tokendrop_jax.finetune")  # nothing but their flags and main
for m in pkgutil.walk_packages(tokendrop_jax.__path__, "tokendrop_jax."):
  if m.name not in mains:
    importlib.import_module(m.name)
print(sorted(n for n in flags.FLAGS
             if (flags.FLAGS.find_module_defining_flag(n) or "").startswith("tokendrop_jax")))
"""


def test_importing_a_module_defines_no_flags():
  """A main's flags are defined when it runs, not when a test or a benchmark imports it for
  its functions: two --output flags in one process are an error (a CI run was lost to one)."""
  res = subprocess.run([sys.executable, "-c", _IMPORT_EVERY_MODULE], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, check=False)
  assert res.returncode == 0, res.stderr[-3000:]
  assert res.stdout.strip() == "[]"
