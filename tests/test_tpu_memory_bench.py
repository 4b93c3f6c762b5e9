"""benchmarks/tpu_memory.py --table on the committed JSONs (no compile): the rows-per-chip
table says what the max-batch table says."""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tables():
  res = subprocess.run([sys.executable, "benchmarks/tpu_memory.py", "--table"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=False)
  assert res.returncode == 0, res.stderr[-3000:]
  tables, current = [], None
  for line in res.stdout.splitlines():
    if line.startswith("| ---"):
      continue
    if line.startswith("|"):
      cells = [c.strip() for c in line.strip("|").split("|")]
      if current is None:
        current = {"head": cells, "rows": []}
        tables.append(current)
      else:
        current["rows"].append(cells)
    else:
      current = None
  return tables


def _table(tables, column):
  return next(t for t in tables if column in t["head"])


def test_rows_per_chip_agree_with_the_max_batch_searches():
  tables = _tables()
  assert len(tables) == 4, [t["head"] for t in tables]
  searched = {}
  for config, topology, remat, step, found, *_ in _table(
      tables, "largest global batch that fits (rows/chip)")["rows"]:
    rows = re.search(r"\((\d+)\)", found).group(1)  # "576 (72)", or the crashed batch's
    crashed = found.startswith("the TPU compiler crashed")
    searched[(config, topology.split("-")[0], remat, step)] = (
        f"compiler crashes at {rows}" if crashed else rows)
  assert searched
  grid = _table(tables, "")  # the rows-per-chip table: its first column has no name
  chips = [h.split()[0] for h in grid["head"][1:]]
  seen = 0
  for row in grid["rows"]:
    config, remat = row[0].split(",")[0], "full" if "remat=full" in row[0] else "none"
    for chip, cell in zip(chips, row[1:]):
      for step, value in zip(("full", "drop256"), cell.split(" / ")):
        assert value == searched.get((config, chip, remat, step), "not run"), (
            config, chip, remat, step)
        seen += value != "not run"
  assert seen == len(searched)
