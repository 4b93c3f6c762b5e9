"""Two JAX processes (localhost coordinator, 2 CPU devices each) train `tiny` and agree."""
import json
import os
import socket
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_and_agree(tmp_path):
  port = _free_port()
  env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": ""}
  outs = [tmp_path / f"out{i}.json" for i in range(2)]
  procs = [subprocess.Popen(
      [sys.executable, "-m", "tests.multiprocess_worker", str(port), str(i),
       str(tmp_path / "workdir"), str(tmp_path / "data"), str(outs[i])],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(2)]
  logs = [p.communicate(timeout=480)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  a, b = (json.loads(o.read_text()) for o in outs)
  assert a["processes"] == b["processes"] == 2 and a["devices"] == 4
  assert a["step"] == b["step"] == 6
  assert a["checksum"] == b["checksum"] and a["eval_loss"] == b["eval_loss"]
  metrics = (tmp_path / "workdir" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(l)["step"] for l in metrics if "loss" in json.loads(l)] == [1, 2, 3, 4, 5, 6]
