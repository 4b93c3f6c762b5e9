"""launch/*.sh: syntax, --help, and dry runs that show the passed-through flags."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = ("local.sh", "tpu_pod.sh", "gpu_slurm.sh")


def _run(script, *args, env=None):
  full_env = {k: v for k, v in os.environ.items()
              if not k.startswith(("SLURM_", "TPU_", "DRY_RUN"))}
  full_env.update(env or {})
  return subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args],
                        capture_output=True, text=True, env=full_env,
                        timeout=30, check=False)


@pytest.mark.parametrize("script", SCRIPTS)
def test_syntax_and_help(script):
  path = os.path.join(ROOT, "launch", script)
  assert subprocess.run(["bash", "-n", path], check=False).returncode == 0
  assert os.access(path, os.X_OK)
  res = _run(script, "--help")
  assert res.returncode == 0 and "Usage" in res.stdout


def test_local_dry_run():
  res = _run("local.sh", "--dry-run", "--config=configs/tiny.py:loss_ema",
             "--workdir=/tmp/run", "--config.train_steps=7", "--onednn")
  assert res.returncode == 0, res.stderr
  out = res.stdout
  assert "-m tokendrop_jax.train" in out
  for flag in ("--config=configs/tiny.py:loss_ema", "--workdir=/tmp/run",
               "--config.train_steps=7", "--xla_cpu_use_onednn=true"):
    assert flag in out
  # Defaults, and DRY_RUN=1 instead of the flag.
  res = _run("local.sh", env={"DRY_RUN": "1"})
  assert "--config=configs/demo.py:loss_ema" in res.stdout
  assert "--workdir=workdir/demo_loss_ema" in res.stdout


def test_tpu_pod_dry_run():
  res = _run("tpu_pod.sh", "--dry-run", "--config=configs/bert_base.py:loss_ema",
             "--workdir=gs://bucket/run", "--config.train_steps=1000",
             env={"TPU_NAME": "pod-1", "ZONE": "us-central2-b",
                  "PROJECT": "proj"})
  assert res.returncode == 0, res.stderr
  out = res.stdout
  for part in ("gcloud compute tpus tpu-vm ssh pod-1", "--zone=us-central2-b",
               "--project=proj", "--worker=all", "TOKENDROP_DISTRIBUTED=1",
               "--config=configs/bert_base.py:loss_ema",
               "--workdir=gs://bucket/run", "--config.train_steps=1000",
               "--platform=tpu"):
    assert part in out
  assert "make install" not in out and "tokendrop_jax.compile" not in out
  res = _run("tpu_pod.sh", "--dry-run", "--config=c", "--workdir=w")
  assert res.returncode == 2 and "--tpu" in res.stderr


def test_tpu_pod_installs_and_checks_the_fit_first():
  res = _run("tpu_pod.sh", "--dry-run", "--install", "--check-fit=v5e-16",
             "--config=configs/bert_base.py:loss_ema", "--workdir=gs://bucket/run",
             "--config.data.global_batch_size=256",
             env={"TPU_NAME": "pod-1", "ZONE": "us-central2-b"})
  assert res.returncode == 0, res.stderr
  fit, launch = res.stdout.strip().splitlines()
  for part in ("-m tokendrop_jax.compile", "--topology=v5e-16",
               "--config=configs/bert_base.py:loss_ema", "--config.data.global_batch_size=256"):
    assert part in fit
  assert "make\\ install\\ ACCEL=tpu\\ \\&\\&\\ TOKENDROP_DISTRIBUTED=1" in launch
  # A main that takes no --platform (prepare) is launched without it.
  res = _run("tpu_pod.sh", "--dry-run", "--module=tokendrop_jax.prepare", "--config=c",
             "--workdir=w", env={"TPU_NAME": "p", "ZONE": "z"})
  assert "--platform" not in res.stdout


def test_gpu_slurm_dry_run():
  res = _run("gpu_slurm.sh", "--dry-run", "--config=configs/bert_base.py",
             "--workdir=/shared/run", "--config.train_steps=10",
             env={"SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_ID": "42"})
  assert res.returncode == 0, res.stderr
  out = res.stdout
  for part in ("JAX_COORDINATOR_ADDRESS=localhost:12042",
               "JAX_NUM_PROCESSES=16", "srun", "--ntasks=16",
               "JAX_PROCESS_ID=\\$SLURM_PROCID",
               "JAX_LOCAL_DEVICE_IDS=\\$SLURM_LOCALID",
               "--config=configs/bert_base.py", "--workdir=/shared/run",
               "--config.train_steps=10", "--platform=gpu"):
    assert part in out
  assert "ACCEL=cuda" not in out
  res = _run("gpu_slurm.sh", "--dry-run", "--per=node", "--config=c",
             "--workdir=w", env={"SLURM_JOB_NUM_NODES": "2"})
  assert "JAX_NUM_PROCESSES=2" in res.stdout
  assert "JAX_LOCAL_DEVICE_IDS" not in res.stdout
  res = _run("gpu_slurm.sh", "--dry-run", "--install", "--config=c", "--workdir=w")
  assert res.stdout.splitlines()[0].strip().endswith("install ACCEL=cuda")
