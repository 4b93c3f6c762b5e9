"""Metrics: WORKDIR/metrics.jsonl + TensorBoard, a progress line, plots, MFU.

Only process 0 writes. ``metrics.jsonl`` holds one JSON object per logged step
with a ``step`` key, a ``wall_time`` (unix seconds) unless given, and floats.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np

METRICS_FILE = "metrics.jsonl"


def _to_float(v) -> float:
  return float(np.asarray(jax.device_get(v)).reshape(()))


def read_metrics(path) -> list[dict]:
  """Records of a metrics.jsonl file; a torn last line (crash) is skipped."""
  rows = []
  with open(path) as f:
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
  dropped = len(rows) - len(keep)
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=".metrics.", dir=directory)
  with os.fdopen(fd, "w") as f:
    for r in keep:
      f.write(json.dumps(r) + "\n")
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return dropped


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
    self.path = os.path.join(workdir, METRICS_FILE)
    self._file = None
    self._tb = None
    if not self.is_main:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None:
      truncate_after(self.path, resume_step)
    self._file = open(self.path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # No TensorFlow needed.
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

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
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k not in ("step", "wall_time"):
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def write_eval(self, step: int, scalars: Mapping[str, Any]) -> None:
    self.write(step, scalars, prefix="eval/")

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

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

  Reads `loss`, `mlm_accuracy` (or `mlm_acc`), `tokens_per_s`, `step_time_s`
  (else elapsed_s / (step - start_step)) and `mfu` when present.
  """
  parts = [f"step {step}/{total_steps}"]
  loss = _first(scalars, ("loss",))
  if loss is not None:
    parts.append(f"loss {loss:.3f}")
  acc = _first(scalars, ("mlm_accuracy", "mlm_acc"))
  if acc is not None:
    parts.append(f"mlm_acc {acc:.2f}")
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


# ---------------------------------------------------------------------------
# Plots.

_EXTRA_PANELS = ("mlm_accuracy", "learning_rate", "grad_norm", "tokens_per_s",
                 "kept_fraction", "mfu")


def _series(rows, x, y):
  pts = [(r[x], r[y]) for r in rows if x in r and y in r
         and r[y] is not None and math.isfinite(r[y])]
  return [p[0] for p in pts], [p[1] for p in pts]


def plot_metrics(metrics_jsonl_path, out_png,
                 keys: Sequence[str] = ("loss", "eval/loss")) -> str:
  """PNG: `keys` against step in one panel, plus known extras if present."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  rows = read_metrics(metrics_jsonl_path)
  present = set().union(*[r.keys() for r in rows]) if rows else set()
  panels = [tuple(keys)]
  for k in _EXTRA_PANELS:
    group = tuple(g for g in (k, "eval/" + k) if g in present)
    if group and k not in keys:
      panels.append(group)
  fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)),
                           sharex=True, squeeze=False)
  for ax, group in zip(axes[:, 0], panels):
    for k in group:
      xs, ys = _series(rows, "step", k)
      if xs:
        ax.plot(xs, ys, label=k, marker="." if len(xs) < 30 else None)
    ax.set_ylabel(group[0].split("/")[-1])
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(loc="best", fontsize=8)
  axes[-1, 0].set_xlabel("step")
  fig.suptitle(os.path.basename(os.path.dirname(os.path.abspath(
      metrics_jsonl_path))) or "metrics")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
  return str(out_png)


def plot_runs(runs: Mapping[str, str], out_png, x: str = "step",
              y: str = "eval/loss") -> str:
  """PNG comparing runs {name: metrics.jsonl}: `y` against step or time.

  x='time' uses `train_time_s` if logged, else wall_time since the first
  record (minutes).
  """
  if x not in ("step", "time"):
    raise ValueError(f"x={x!r}: expected 'step' or 'time'.")
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, ax = plt.subplots(figsize=(7, 4))
  for name, path in runs.items():
    rows = [r for r in read_metrics(path) if y in r]
    if x == "step":
      xs, ys = _series(rows, "step", y)
    elif rows and all("train_time_s" in r for r in rows):
      xs, ys = _series(rows, "train_time_s", y)
      xs = [v / 60 for v in xs]
    else:
      xs, ys = _series(rows, "wall_time", y)
      xs = [(v - xs[0]) / 60 for v in xs] if xs else xs
    ax.plot(xs, ys, label=name, marker="." if len(xs) < 30 else None)
  ax.set_xlabel("step" if x == "step" else "time (min)")
  ax.set_ylabel(y)
  ax.grid(alpha=0.3)
  ax.legend(loc="best", fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
  fig.savefig(out_png, dpi=110)
  plt.close(fig)
  return str(out_png)


# ---------------------------------------------------------------------------
# Model FLOPs utilisation.

# Peak dense bf16 FLOP/s per device (vendor numbers, no sparsity).
PEAK_FLOPS: dict[str, float] = {
    "TPU v3": 123e12,
    "TPU v4": 275e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6e": 918e12,
    "A100": 312e12,
    "H100": 989e12,  # SXM; PCIe is 756e12.
    "H100 PCIe": 756e12,
    "H200": 989e12,
}

# (regex on lower-cased device_kind, PEAK_FLOPS key); first match wins.
_PATTERNS = (
    (r"v5\s*lite|v5e|v5litepod", "TPU v5e"),
    (r"v6\s*lite|v6e", "TPU v6e"),
    (r"v5p|tpu v5\b", "TPU v5p"),
    (r"tpu v4|\bv4\b", "TPU v4"),
    (r"tpu v3|\bv3\b", "TPU v3"),
    (r"h100.*pcie", "H100 PCIe"),
    (r"h100", "H100"),
    (r"h200", "H200"),
    (r"a100", "A100"),
)


def peak_flops_per_device(device_kind: str,
                          override: float | None = None) -> float | None:
  """Peak FLOP/s of one device: `override` if given, else looked up, else None.

  Matches `jax.devices()[0].device_kind`, e.g. 'TPU v4', 'TPU v5 lite',
  'NVIDIA A100-SXM4-40GB', 'NVIDIA H100 80GB HBM3'. Unknown (CPU) -> None.
  """
  if override:
    return float(override)
  kind = (device_kind or "").lower()
  for pattern, key in _PATTERNS:
    if re.search(pattern, kind):
      return PEAK_FLOPS[key]
  return None


def mfu(flops_per_step: float, step_time_s: float, n_devices: int,
        peak: float | None) -> float | None:
  """Model FLOPs utilisation in [0, 1]; None when the peak is unknown."""
  if not peak or step_time_s <= 0 or n_devices <= 0:
    return None
  return flops_per_step / (step_time_s * n_devices * peak)
