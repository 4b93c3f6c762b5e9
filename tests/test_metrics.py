"""metrics.jsonl, TensorBoard events, resume truncation, progress line, plots, MFU."""
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from tokendrop_jax import flops
from tokendrop_jax.training import metrics, plots


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_writer_jsonl_and_tensorboard(tmp_path):
  w = metrics.MetricsWriter(tmp_path, is_main=True)
  w.write(10, {"loss": jnp.float32(6.5), "lr": np.float64(1e-4)})
  # Flushed per line: readable before close.
  assert _lines(tmp_path / "metrics.jsonl")[0]["loss"] == 6.5
  w.write_eval(10, {"loss": 6.0})
  w.close()
  rows = _lines(tmp_path / "metrics.jsonl")
  assert [r["step"] for r in rows] == [10, 10]
  assert rows[0]["lr"] == pytest.approx(1e-4) and isinstance(rows[0]["loss"], float)
  assert rows[1]["eval/loss"] == 6.0 and "wall_time" in rows[1]
  events = os.listdir(tmp_path / "tensorboard")
  assert any(e.startswith("events.out.tfevents") for e in events)


def test_non_main_writes_nothing(tmp_path):
  w = metrics.MetricsWriter(tmp_path / "w", is_main=False)
  w.write(1, {"loss": 1.0})
  w.close()
  assert not os.path.exists(tmp_path / "w")


def test_resume_appends_and_truncates_after_restored_step(tmp_path):
  w = metrics.MetricsWriter(tmp_path, is_main=True, tensorboard=False)
  for step in (10, 20, 30, 40):
    w.write(step, {"loss": step / 10})
  w.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 50, "lo')  # Torn line from a crash.
  # Plain reopen appends, never truncates.
  w = metrics.MetricsWriter(tmp_path, is_main=True, tensorboard=False)
  w.close()
  assert len(metrics.read_metrics(tmp_path / "metrics.jsonl")) == 4
  # Resume from the checkpoint at step 20: the later records go.
  w = metrics.MetricsWriter(tmp_path, is_main=True, tensorboard=False,
                            resume_step=20)
  w.write(30, {"loss": 9.0})
  w.close()
  rows = _lines(tmp_path / "metrics.jsonl")
  assert [(r["step"], r["loss"]) for r in rows] == [(10, 1.0), (20, 2.0),
                                                   (30, 9.0)]
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".metrics")]


def test_format_progress():
  line = metrics.format_progress(
      120, 2000, {"loss": 6.1234, "mlm_accuracy": 0.123,
                  "tokens_per_s": 41234.0, "step_time_s": 0.3523}, 42.0)
  assert line == ("step 120/2000 | loss 6.123 | mlm_acc 0.12 | 41.2k tok/s | "
                  "0.35 s/step | ETA 11m02s")
  # Without a step time: elapsed / steps done in this run.
  line = metrics.format_progress(150, 1150, {"loss": 1.0}, 100.0,
                                 start_step=100)
  assert line == "step 150/1150 | loss 1.000 | 2.00 s/step | ETA 33m20s"
  assert "ETA 2h46m" in metrics.format_progress(
      0, 10000, {"step_time_s": 1.0}, 0.0)


def test_plots(tmp_path):
  path = tmp_path / "metrics.jsonl"
  w = metrics.MetricsWriter(tmp_path, is_main=True, tensorboard=False)
  for step in range(0, 100, 10):
    w.write(step, {"loss": 10 - step / 20, "learning_rate": 1e-4,
                   "train_time_s": step * 0.5})
    if step % 50 == 0:
      w.write_eval(step, {"loss": 10 - step / 25})
  w.close()
  out = plots.plot_metrics(path, tmp_path / "loss.png")
  assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  for x in ("step", "time"):
    out = plots.plot_runs({"a": path, "b": path}, tmp_path / f"{x}.png", x=x)
    assert os.path.getsize(out) > 1000
  with pytest.raises(ValueError, match="x='epoch'"):
    plots.plot_runs({"a": path}, tmp_path / "x.png", x="epoch")


@pytest.mark.parametrize("kind, peak", [
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("NVIDIA A100-SXM4-40GB", 312e12),
    ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA H100 80GB HBM3", 989e12),
    ("NVIDIA H100 PCIe", 756e12),
    ("cpu", None),
])
def test_peak_flops(kind, peak):
  assert flops.peak_flops_per_device(kind) == peak


def test_mfu():
  assert flops.peak_flops_per_device("cpu", override=3.2e11) == 3.2e11
  assert flops.mfu(1e12, 0.5, 4, 1e12) == pytest.approx(0.5)
  assert flops.mfu(1e12, 0.5, 4, None) is None
