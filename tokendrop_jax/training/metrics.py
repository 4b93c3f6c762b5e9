"""Metrics: WORKDIR/metrics.jsonl + TensorBoard, and the progress line.

Only process 0 writes. ``metrics.jsonl`` holds one JSON object per logged step
with a ``step`` key, a ``wall_time`` (unix seconds) unless given, and floats.
In a bucket workdir both are written to a local mirror and uploaded in the
background, at most every 30 s, and at every checkpoint and at exit
(`mirror.Mirror`): an object store has no append, and the step loop never waits on it.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import jax
import numpy as np

from tokendrop_jax import files, mirror
from tokendrop_jax.training import workdir as workdir_lib


def _to_float(v) -> float:
  return float(np.asarray(jax.device_get(v)).reshape(()))


def read_metrics(path) -> list[dict]:
  """Records of a metrics.jsonl file; a torn last line (crash) is skipped."""
  rows = []
  with files.open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def truncate_after(path, step: int) -> int:
  """Atomically drops records with step > `step`; returns how many went."""
  if not os.path.exists(path):
    return 0
  rows = read_metrics(path)
  keep = [r for r in rows if r.get("step", -1) <= step]
  files.atomic_write(path, "".join(json.dumps(r) + "\n" for r in keep))
  return len(rows) - len(keep)


class MetricsWriter:
  """Appends scalars to WORKDIR/metrics.jsonl and WORKDIR/tensorboard.

  On resume pass `resume_step` (the restored step): records with a larger
  step, written after that checkpoint by the interrupted run, are removed
  (atomically) so the file matches the resumed run; earlier records stay.
  Without `resume_step` an existing file is appended to, never truncated.
  """

  def __init__(self, workdir, *, is_main: bool | None = None,
               tensorboard: bool = True, resume_step: int | None = None):
    self.is_main = jax.process_index() == 0 if is_main is None else is_main
    self.path = workdir_lib.path(workdir, workdir_lib.METRICS_FILE)
    self._file = None
    self._tb = None
    self._mirror = None
    if not self.is_main:
      return
    self._mirror = mirror.Mirror(workdir, names=(workdir_lib.METRICS_FILE,))
    local = self._mirror.path(workdir_lib.METRICS_FILE)
    if resume_step is not None:
      truncate_after(local, resume_step)
    self._file = open(local, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # No TensorFlow needed.
      self._tb = SummaryWriter(self._mirror.path(workdir_lib.TENSORBOARD_DIR), flush_secs=10)
      self._mirror.before_upload = self._tb.flush

  def write(self, step: int, scalars: Mapping[str, Any],
            prefix: str = "") -> None:
    """One record: {'step': step, prefix + key: float(value), ...}."""
    if not self.is_main:
      return
    step = int(step)
    record = {"step": step}
    for k, v in scalars.items():
      record[prefix + k] = _to_float(v)
    record.setdefault("wall_time", time.time())
    with self._mirror.lock:  # its uploads never take half a record
      self._file.write(json.dumps(record) + "\n")
      self._file.flush()
      if self._tb is not None:  # flushed by its own thread, before uploads, and at close
        for k, v in record.items():
          if k not in ("step", "wall_time"):
            self._tb.add_scalar(k, v, step)
    self._mirror.sync()  # a bucket: uploaded in the background

  def flush(self) -> None:
    """Every record written so far is in the workdir (a bucket's uploads done)."""
    if self._mirror is not None:
      self._mirror.flush()  # its before_upload flushes the TensorBoard writer

  def write_eval(self, step: int, scalars: Mapping[str, Any]) -> None:
    self.write(step, scalars, prefix="eval/")

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._mirror is not None:
      self._mirror.close()
      self._mirror = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# ---------------------------------------------------------------------------
# Progress line.


def _first(scalars, names):
  for n in names:
    if n in scalars and scalars[n] is not None:
      return _to_float(scalars[n])
  return None


def _duration(s: float) -> str:
  if not math.isfinite(s):
    return "?"
  s = int(round(s))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def _si(x: float) -> str:
  for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(x) >= div:
      return f"{x / div:.1f}{unit}"
  return f"{x:.0f}"


def format_progress(step: int, total_steps: int, scalars: Mapping[str, Any],
                    elapsed_s: float, *, start_step: int = 0) -> str:
  """`step 120/2000 | loss 6.123 | mlm_acc 0.12 | 41.2k tok/s | 0.35 s/step | ETA 11m02s`.

  Reads `loss`, `mlm_accuracy` (or `mlm_acc`), `accuracy`, `tokens_per_s`, `step_time_s`
  (else elapsed_s / (step - start_step)) and `mfu` when present.
  """
  parts = [f"step {step}/{total_steps}"]
  loss = _first(scalars, ("loss",))
  if loss is not None:
    parts.append(f"loss {loss:.3f}")
  acc = _first(scalars, ("mlm_accuracy", "mlm_acc"))
  if acc is not None:
    parts.append(f"mlm_acc {acc:.2f}")
  acc = _first(scalars, ("accuracy",))  # a classifier's (fine-tuning)
  if acc is not None:
    parts.append(f"acc {acc:.3f}")
  tps = _first(scalars, ("tokens_per_s", "tokens_per_sec", "tok_per_s"))
  if tps is not None:
    parts.append(f"{_si(tps)} tok/s")
  sps = _first(scalars, ("step_time_s", "step_time", "sec_per_step"))
  if sps is None and step > start_step:
    sps = elapsed_s / (step - start_step)
  if sps is not None:
    parts.append(f"{sps:.2f} s/step")
  mfu_v = _first(scalars, ("mfu",))
  if mfu_v is not None:
    parts.append(f"MFU {100 * mfu_v:.1f}%")
  if sps is not None:
    parts.append(f"ETA {_duration(max(total_steps - step, 0) * sps)}")
  return " | ".join(parts)
