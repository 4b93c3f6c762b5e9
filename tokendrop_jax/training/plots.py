"""Plots of metrics.jsonl files: one run's curves, or several runs compared (PNG)."""
from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

from tokendrop_jax import files
from tokendrop_jax.training.metrics import read_metrics

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
  fig.suptitle(files.basename(files.dirname(files.resolve(metrics_jsonl_path))) or "metrics")
  fig.tight_layout()
  return _save(fig, plt, out_png)


def _save(fig, plt, out_png) -> str:
  """Writes the figure as PNG to `out_png` (local or a bucket), atomically."""
  buf = io.BytesIO()
  fig.savefig(buf, format="png", dpi=110)
  plt.close(fig)
  files.atomic_write(out_png, buf.getvalue())
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
  return _save(fig, plt, out_png)
