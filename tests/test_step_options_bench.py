"""benchmarks/step_options.py --smoke: the CPU table of attention, PRNG and remat rows."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "step_options.py")


@pytest.mark.slow
def test_smoke_run_times_each_row_against_the_default(tmp_path):
  out = tmp_path / "step_options.json"
  proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--rows=xla,remat_dots",
                         f"--output={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(out.read_text())
  assert results["smoke"] and list(results["rows"]) == ["default", "remat_dots", "xla"]
  assert results["rows"]["default"]["full_over_default"] == 1.0
  for row in results["rows"].values():
    assert row["full_step_s"] > 0 and row["drop_step_s"] > 0
    assert len(row["full_step_times_s"]) == results["steps"] == 1
  assert results["rows"]["xla"]["changes"] == {"model.attention": "xla",
                                               "model.attention_dropout_rate": 0.0}


def test_an_unknown_row_is_refused_by_name():
  proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--rows=remat_everything"], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "remat_everything" in proc.stderr
