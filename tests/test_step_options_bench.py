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


@pytest.mark.slow
def test_smoke_run_of_the_token_drop_set_times_every_option_and_run_average(tmp_path):
  """--set=token_drop: what benchmarks/options_speed.py measured before it was folded in."""
  out = tmp_path / "options.json"
  proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--set=token_drop", f"--output={out}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  assert r["smoke"] and r["config"] == "tiny" and r["steps"] == 1
  assert list(r["per_step"])[:7] == ["full", "drop", "drop_sctd", "drop_sctd_paper",
                                     "drop_random_ties", "drop_random", "drop_layerwise"]
  assert [k for k in r["per_step"] if k.startswith("keep_")] == [
      f"keep_{k}" for k in r["schedule_stages"] if k != r["keep_tokens"]]
  assert r["per_step"]["full"]["measured_ratio"] == r["per_step"]["full"]["flops_ratio"] == 1.0
  assert 0 < r["per_step"]["drop"]["flops_ratio"] < 1
  assert set(r["run_average"]) == {"paper", "sctd_every_10", "sctd_paper_every_10", "layerwise",
                                   "schedule"}
  assert all(len(t) == 1 for t in r["step_times_s"].values())
  assert r["environment"]["device"] and r["environment"]["command"]


def test_rows_are_for_the_kernel_set_only():
  proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--set=token_drop", "--rows=xla"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and "--set=kernel" in proc.stderr
