"""Which flags of the benchmark commands the docs show are not defined by their script.

  python -m tests.doc_benchmark_flags < commands.json   (a list of [where, script, [flags]])

Each script is loaded as a module (its absl flags get defined, its main does not run;
a script that defines them in `_define_flags()` has that called),
its flags are checked and then removed, so the next script may define the same names.
Prints one line per unknown flag; exit status 1 if there is any.
"""
import json
import os
import runpy
import sys

from absl import flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def unknown_flags(commands) -> list[str]:
  by_script: dict[str, list[tuple[str, list[str]]]] = {}
  for where, script, names in commands:
    by_script.setdefault(script, []).append((where, names))
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))  # the scripts import their neighbours
  out = []
  for script, uses in sorted(by_script.items()):
    before = set(flags.FLAGS)
    module = runpy.run_path(os.path.join(ROOT, script), run_name="doc_benchmark_flags")
    define = module.get("_define_flags") or module.get("define_flags")
    if define:  # a script importable by tests defines its flags only when it runs
      define()
    defined = set(flags.FLAGS) - before
    for where, names in uses:
      out += [f"{where}: {script} has no flag --{n}" for n in names if n not in flags.FLAGS]
    for name in defined:
      delattr(flags.FLAGS, name)
  return out


if __name__ == "__main__":
  problems = unknown_flags(json.load(sys.stdin))
  print("\n".join(problems) or "all flags defined")
  sys.exit(1 if problems else 0)
