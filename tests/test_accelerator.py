"""The platform guard: a run that expects an accelerator stops before anything when JAX
runs elsewhere, naming what it found and the install command."""
import os
import subprocess
import sys

import jax
import pytest

from tokendrop_jax import accelerator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_platform_guard_passes_the_backend_it_expects():
  assert accelerator.check("any") == "cpu"
  assert accelerator.check("cpu") == "cpu"
  with pytest.raises(accelerator.PlatformError) as e:
    accelerator.check("gpu")
  assert "JAX runs on CPU" in str(e.value) and "make install ACCEL=cuda" in str(e.value)


@pytest.mark.parametrize("module", ["tokendrop_jax.train", "tokendrop_jax.finetune"])
def test_a_run_that_expects_a_tpu_stops_before_anything(module, tmp_path):
  workdir = tmp_path / "run"
  config = "configs/tiny.py" if module.endswith("train") else "configs/glue.py:sst2"
  res = subprocess.run([sys.executable, "-m", module, f"--config={config}",
                        f"--workdir={workdir}", "--platform=tpu"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, check=False)
  assert res.returncode == 2, res.stderr[-2000:]
  assert "error: --platform=tpu, but JAX runs on CPU" in res.stderr
  assert "make install ACCEL=tpu" in res.stderr and "Traceback" not in res.stderr
  assert not workdir.exists()  # nothing built, nothing written


def test_every_process_of_a_multiprocess_run_prints_its_platform(monkeypatch, capsys):
  assert accelerator.start("any", distributed=False) is None  # the backend is not touched
  assert accelerator.start("cpu", distributed=False) == "cpu"
  assert capsys.readouterr().out == ""  # one process: nothing to tell apart
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  assert accelerator.start("any", distributed=True) == "cpu"
  assert capsys.readouterr().out.strip() == "process 1/2: cpu, 8 local of 8 devices (8 x cpu)"


def test_an_unknown_platform_is_named():
  with pytest.raises(ValueError, match="--platform must be one of any, cpu, gpu, tpu"):
    accelerator.check("tpuv4")
