"""Every command the README and docs/ show is run: the mains up to config validation
(tests/readme_dry_run.py), the launchers with --dry-run; the benchmark scripts they name
exist and define every flag shown. A renamed flag, an unknown config field or variant,
or a topology name the compile main does not know breaks this test rather than a
user's run."""
import json
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
SCRIPT = re.compile(r"(benchmarks/\w+\.(?:py|sh))((?:\s+[^\s`|]+)*)")


def _benchmark_commands():
  """(doc:line, script, [flag names]) of each benchmark command, in a shell block or in
  `inline code`; a flag's name is what precedes its '=' (and a config override's '.')."""
  out = []
  for path in DOCS:
    with open(path, encoding="utf-8") as f:
      text = f.read()
    blocks = re.sub(r"```.*?```", lambda m: re.sub(r"[^\n]", " ", m.group(0)), text, flags=re.S)
    spans = [(m.start(), m.group(1)) for m in re.finditer(r"`([^`]+)`", blocks)]
    for b in re.finditer(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S):
      start, body = b.start(1), b.group(1)
      for m in re.finditer(r"(?:[^\n]*\\\n)*[^\n]*", body):
        line = m.group(0)
        if line.strip() and not line.lstrip().startswith("#"):
          spans.append((start + m.start(), re.sub(r"\s+#.*$", "", line.replace("\\\n", " "))))
    for pos, command in spans:
      for m in SCRIPT.finditer(command.replace("[", " ").replace("]", " ")):
        names = [t[2:].split("=")[0].split(".")[0] for t in m.group(2).split()
                 if t.startswith("--") and "…" not in t[:3]]
        where = f"{os.path.relpath(path, ROOT)}:{text.count(chr(10), 0, pos) + 1}"
        out.append((where, m.group(1), names))
  return out


def test_the_benchmark_commands_shown_exist_and_their_flags_too():
  commands = _benchmark_commands()
  assert len({script for _, script, _ in commands}) >= 15  # the docs' benchmarks, all found
  for where, script, names in commands:
    assert os.path.exists(os.path.join(ROOT, script)), f"{where}: no {script}"
    if script.endswith(".sh"):
      with open(os.path.join(ROOT, script), encoding="utf-8") as f:
        body = f.read()
      assert all(f"--{n}" in body for n in names), f"{where}: {script} {names}"
  python = [c for c in commands if c[1].endswith(".py")]
  res = subprocess.run([sys.executable, "-m", "tests.doc_benchmark_flags"], cwd=ROOT,
                       input=json.dumps(python), capture_output=True, text=True, timeout=300,
                       check=False)
  assert res.returncode == 0, res.stdout + res.stderr[-3000:]


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
