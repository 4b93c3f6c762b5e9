"""benchmarks/gpu_floor.py --smoke: the compile-only GPU report's plumbing on this host's CPU
(the GPU compile needs the CUDA plugin: `make install ACCEL=cuda VENV=.venv-cuda`)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_smoke_run_reports_floors_that_add_up(tmp_path):
  out = tmp_path / "floor.json"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_floor.py"),
                         "--smoke", "--top=5", f"--output={out}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads(out.read_text())
  assert r["smoke"] and list(r["cases"]) == ["s32_einsum", "s32_xla"]
  assert (tmp_path / "floor.png").stat().st_size > 0
  for case in r["cases"].values():
    for kind in ("full", "drop"):
      step = case[kind]
      # the compiled matmuls are the analytic FLOPs; the floor is at least theirs
      assert step["flops"] == pytest.approx(step["step_flops"], rel=1e-6)
      assert step["matmul_floor_s"] < step["floor_s"]
      assert step["mfu_at_floor"] == pytest.approx(
          step["step_flops"] / (step["floor_s"] * 989e12))  # an H100's bf16 peak (--gpu=h100)
      assert sum(g["floor_s"] for g in step["by_kind"].values()) == pytest.approx(step["floor_s"])
      assert len(step["top"]) == 5 and step["top"][0]["floor_s"] >= step["top"][-1]["floor_s"]
    assert case["floor_drop_over_full"] < 1 and 0 < case["flops_ratio"] < 1


def test_unknown_case_is_refused_before_compiling():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_floor.py"),
                         "--smoke", "--cases=s128_nope"], cwd=ROOT, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode != 0 and "s128_nope" in proc.stderr
