"""benchmarks/accelerator.sh --smoke: the GPU benchmark's script runs end to end on the CPU,
profile included."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_smoke_run_writes_every_case_and_records_what_the_platform_lacks(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable)
  proc = subprocess.run([os.path.join(ROOT, "benchmarks", "accelerator.sh"), str(tmp_path),
                         "--smoke", "--cases=s32_xla,s32_cudnn,s32_no_dropout"], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads((tmp_path / "accelerator.json").read_text())
  assert results["smoke"] and list(results["cases"]) == ["s32_xla", "s32_cudnn", "s32_no_dropout"]
  xla = results["cases"]["s32_xla"]
  for kind in ("full", "drop"):
    assert xla[kind]["step_s"] > 0 and len(xla[kind]["step_times_s"]) == results["steps"]
    assert xla[kind]["compiled"]["temp_bytes"] > 0 and xla[kind]["compiled"]["compile_s"] > 0
    assert xla[kind]["mfu"] is None  # a CPU has no known peak
  assert 0 < xla["flops_ratio"] < 1
  assert "model.attention='cudnn' needs a GPU" in results["cases"]["s32_cudnn"]["error"]
  no_dropout = results["cases"]["s32_no_dropout"]
  assert (no_dropout["dropout_rate"], xla["dropout_rate"]) == (0.0, 0.1)
  assert no_dropout["full"]["step_s"] > 0 and no_dropout["drop"]["compiled"]["compile_s"] > 0
  # then the profile of the fastest case per token (cudnn has no time, so never it)
  fastest = min(["s32_xla", "s32_no_dropout"], key=lambda n: results["cases"][n]["full"]["step_s"])
  assert f"--config.model.attention={results['cases'][fastest]['attention']}" in proc.stdout
  for kind in ("full", "drop"):
    profile = json.loads((tmp_path / f"profile_{kind}.json").read_text())
    assert profile["kind"] == kind and profile["batch_size"] == 8 and profile["seq_len"] == 32
    assert profile["instructions_matched"] == profile["instructions_seen"] > 100


def test_usage_without_an_output_folder():
  proc = subprocess.run([os.path.join(ROOT, "benchmarks", "accelerator.sh")], cwd=ROOT,
                        capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2 and "OUTDIR" in proc.stdout
