"""benchmarks/profile_step.py on `tiny`: every executed instruction labelled, shares add up."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["full", "drop"])
def test_profile_labels_every_instruction_and_shares_sum_to_one(tmp_path, kind):
  out = tmp_path / "profile.json"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "profile_step.py"),
                         "--config=configs/tiny.py", "--config.data.seq_len=32",
                         f"--kind={kind}", "--steps=1",
                         f"--output={out}"], cwd=ROOT, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  assert r["kind"] == kind and r["instructions_seen"] > 100
  assert r["seq_len"] == 32 and r["dtype"] == "float32"  # the override, and the config's own
  assert r["instructions_matched"] == r["instructions_seen"]
  for grouping in ("by_pass", "by_kind", "by_part"):
    assert sum(r[grouping].values()) == pytest.approx(1.0, abs=2e-3)
  assert r["by_kind"]["dot"] > 0.05 and r["by_pass"]["backward"] > 0.05
  assert ("sort" in r["by_kind"]) == (kind == "drop")  # only the drop step selects tokens
