"""Two real JAX processes x 4 CPU devices against one process x 8: the same numbers.

The global batch is made of virtual input shards (`host_rows`, `data.shards`), so
neither the process count nor the mesh layout may change it:
  * pretraining `tiny` on the meshes 8x1x1, 2x1x4, 1x2x4 and 1x1x8 (a model axis
    spanning both processes) logs the losses of the single-process run;
  * a run stopped (SIGTERM) by 2 processes continues on 1, and one stopped on 1
    continues on 2, exactly as an uninterrupted run;
  * fine-tuning on a mesh whose device order mixes the processes gives the dev
    metrics and predictions.tsv of a single process in plain order.
"""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import multiprocess_jobs
from tests.test_config import load
from tests.test_finetune import write_task
from tokendrop_jax.training import inputs
from tokendrop_jax.training.input_settings import InputSettings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHES = {"8x1x1": (8, 1, 1), "2x1x4": (2, 1, 4), "1x2x4": (1, 2, 4), "1x1x8": (1, 1, 8)}
PERMUTED = [5, 2, 7, 0, 3, 6, 1, 4]  # mixes the two processes' devices in the mesh


def _launch(tmp_path, jobs, processes=2, local_devices=4):
  spec = tmp_path / "jobs.json"
  spec.write_text(json.dumps(jobs))
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""}
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.multiprocess_worker", str(port), str(i), str(processes),
       str(local_devices), str(spec)],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(processes)]
  logs = [p.communicate(timeout=900)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-4000:]
  return logs


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
  evals = {r["step"]: r["eval/loss"] for r in rows if "eval/loss" in r}
  return losses, evals


def _assert_close(got, want):
  assert sorted(got) == sorted(want), (got, want)
  np.testing.assert_allclose([got[k] for k in sorted(got)], [want[k] for k in sorted(want)],
                             rtol=1e-5)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """The tiny corpus and tokenizer, built once; every run reads them."""
  d = tmp_path_factory.mktemp("mp_inputs")
  config = load("tiny")
  config.data.dataset_dir = str(d / "data")
  dataset_dir, _ = inputs.prepare(InputSettings.of(config), str(d / "prep"))
  return {"data.dataset_dir": dataset_dir,
          "data.tokenizer_model": str(d / "prep" / "tokenizer.model")}


def _pretrain(prepared, workdir, mesh, steps, stop_at=None, device_order=None):
  fields = {**prepared, "data.num_shards": 4, "train.num_steps": steps, "train.log_every": 1,
            "train.eval_every": 3, "train.eval_batches": 2, "train.checkpoint_every": 3,
            "mesh.data": mesh[0], "mesh.fsdp": mesh[1], "mesh.tensor": mesh[2]}
  return {"kind": "pretrain", "workdir": str(workdir), "fields": fields, "stop_at": stop_at,
          "device_order": device_order}


@pytest.mark.slow
def test_two_processes_give_the_single_process_numbers(tmp_path, prepared):
  d = tmp_path
  files = {"train_file": write_task(d / "train.tsv", 64, 0),
           "eval_file": write_task(d / "dev.tsv", 40, 1),
           "predict_file": write_task(d / "test.tsv", 21, 2, labels=False)}
  finetune = {"kind": "finetune", "tokenizer": prepared["data.tokenizer_model"], "files": files,
              "fields": {"model.vocab_size": 1000, "mesh.data": 8}}

  # One process, 8 devices: the references.
  for name, mesh in MESHES.items():
    steps = 6 if name == "8x1x1" else 3
    multiprocess_jobs.run_job(_pretrain(prepared, d / f"one_{name}", mesh, steps))
  multiprocess_jobs.run_job(_pretrain(prepared, d / "one_then_two", MESHES["8x1x1"], 6,
                                      stop_at=3))
  multiprocess_jobs.run_job({**finetune, "workdir": str(d / "ft_one")})

  # Two processes, 4 devices each.
  jobs = [_pretrain(prepared, d / f"two_{name}", mesh, 3) for name, mesh in MESHES.items()
          if name != "8x1x1"]
  jobs += [_pretrain(prepared, d / "two_then_one", MESHES["8x1x1"], 6, stop_at=3),
           _pretrain(prepared, d / "one_then_two", MESHES["8x1x1"], 6),
           {**finetune, "workdir": str(d / "ft_two"), "device_order": PERMUTED}]
  _launch(tmp_path, jobs)
  multiprocess_jobs.run_job(_pretrain(prepared, d / "two_then_one", MESHES["8x1x1"], 6))

  reference = _metrics(d / "one_8x1x1")
  assert sorted(reference[0]) == [1, 2, 3, 4, 5, 6]
  for name in MESHES:
    if name != "8x1x1":
      one, two = _metrics(d / f"one_{name}"), _metrics(d / f"two_{name}")
      _assert_close(two[0], one[0])
      _assert_close(two[1], one[1])
      # and the mesh itself changes only the rounding
      _assert_close(one[0], {k: v for k, v in reference[0].items() if k <= 3})
  for resumed in ("two_then_one", "one_then_two"):
    losses, evals = _metrics(d / resumed)
    _assert_close(losses, reference[0])
    _assert_close(evals, reference[1])

  one, two = (json.loads((d / f"ft_{n}" / "results.json").read_text()) for n in ("one", "two"))
  np.testing.assert_allclose(two["last"]["accuracy"], one["last"]["accuracy"], rtol=1e-6)
  assert one["last"]["accuracy"] > 0  # a metric was computed on the dev rows
  assert (d / "ft_two" / "predictions.tsv").read_text() == (
      d / "ft_one" / "predictions.tsv").read_text()
  _assert_close(_metrics(d / "ft_two")[0], _metrics(d / "ft_one")[0])
