"""Every command the README and docs/ show is run: the mains up to config validation
(tests/readme_dry_run.py), the launchers with --dry-run. A renamed flag, an unknown
config field or variant, or a topology name the compile main does not know breaks
this test rather than a user's run."""
import glob
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
MAIN = re.compile(r"^(?:\.venv/bin/)?python3? -m (tokendrop_jax\.\w+)\s*(.*)$")
LAUNCH = re.compile(r"^(?:sbatch(?: --[\w-]+=\S+)* )?(launch/\w+\.sh)\s*(.*)$")


def _commands():
  """(doc:line, kind, target, args) of each command in a fenced shell block."""
  out = []
  for path in DOCS:
    with open(path, encoding="utf-8") as f:
      lines = f.read().splitlines()
    in_block, start, pending = False, 0, ""
    for n, line in enumerate(lines, 1):
      if line.startswith("```"):
        in_block = line.strip() in ("```bash", "```sh", "```shell")
        pending = ""
        continue
      if not in_block or line.lstrip().startswith("#"):
        continue
      if not pending:
        start = n
      pending += line.rstrip("\\").strip() + " "
      if line.endswith("\\"):
        continue
      command, pending = re.sub(r"\s+#.*$", "", pending.strip()), ""
      command = re.sub(r"\[[^\]]*\]", "", command).replace("$(nproc)", "2")
      where = f"{os.path.relpath(path, ROOT)}:{start}"
      for kind, pattern in (("main", MAIN), ("launch", LAUNCH)):
        m = pattern.match(command)
        if m:
          out.append(pytest.param(kind, m.group(1), shlex.split(m.group(2)), id=where))
  return out


COMMANDS = _commands()


def test_the_docs_show_the_commands_we_check():
  kinds = {(p.values[0], p.values[1]) for p in COMMANDS}
  for module in ("train", "finetune", "prepare", "export", "import_hf", "compile"):
    assert ("main", f"tokendrop_jax.{module}") in kinds, module
  for script in ("tpu_pod.sh", "gpu_slurm.sh", "local.sh"):
    assert ("launch", f"launch/{script}") in kinds, script


@pytest.mark.parametrize("kind,target,args", [p for p in COMMANDS if p.values[0] == "launch"])
def test_launch_commands_dry_run(kind, target, args):
  del kind
  env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "TPU_"))}
  res = subprocess.run(["bash", os.path.join(ROOT, target), *args, "--dry-run"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, env=env, check=False)
  assert res.returncode == 0, res.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind,target,args", [p for p in COMMANDS if p.values[0] == "main"])
def test_main_commands_validate(kind, target, args):
  del kind
  res = subprocess.run([sys.executable, "-m", "tests.readme_dry_run", target, *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=False)
  assert res.returncode == 0 and "dry run: flags and config valid" in res.stdout, \
      res.stderr[-3000:]
