"""Token-drop speed-up against the FLOPs limit: sizes, sequence lengths, keep fractions.

  .venv/bin/python benchmarks/speed_sweep.py [--steps=6] \
      [--output=benchmarks/results/speed_sweep.json]

Each point runs `tokendrop_jax.benchmark.run_benchmark`: the full and the drop
train step of one config, alternated in one process, medians after warm-up.
Writes JSON (`points`: one `run_benchmark` result each) and a PNG of measured vs
analytic (FLOPs) drop/full ratio.
"""
from __future__ import annotations

import os

from absl import app, flags

_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/speed_sweep.json", "JSON path.")
_STEPS = flags.DEFINE_integer("steps", 6, "Timed steps per model and point.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.")
_ONLY = flags.DEFINE_list("only", [], "Run only these point names (default: all).")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name):
  from tokendrop_jax import config_lib
  return config_lib.load_file(os.path.join(ROOT, "configs", f"{name}.py"), "loss_ema")


def points():
  """(sweep, name, config) for every measured point."""
  out = [("size", "tiny", _load("tiny")), ("size", "bench_cpu", _load("bench_cpu"))]
  deep = _load("bench_cpu")
  deep.name = "deep12"
  deep.model.num_layers = 12
  deep.data.global_batch_size = 8
  out.append(("size", "deep12", deep))
  for seq, batch in ((128, 32), (512, 8)):  # same tokens per batch as bench_cpu (4096)
    c = _load("bench_cpu")
    c.name = f"seq{seq}"
    c.model.max_position = 512
    c.data.update(seq_len=seq, global_batch_size=batch, max_predictions_per_seq=round(0.15 * seq))
    c.token_drop.keep_tokens = seq // 2
    out.append(("seq_len", c.name, c))
  for frac in (0.25, 0.75):
    c = _load("bench_cpu")
    c.name = f"keep{int(frac * 100)}"
    c.token_drop.keep_tokens = int(frac * c.data.seq_len)
    out.append(("keep", c.name, c))
  return out


def main(argv):
  del argv
  from tokendrop_jax import benchmark
  results = []
  for sweep, name, config in points():
    if _ONLY.value and name not in _ONLY.value:
      continue
    r = benchmark.run_benchmark(config, steps=_STEPS.value, warmup=_WARMUP.value)
    r.update(sweep=sweep, point=name)
    results.append(r)
    print(f"{name:10s} seq {r['seq_len']:4d} keep {r['keep_tokens']:4d} L{r['num_layers']:<3d}"
          f" full {r['full_step_s']:.3f} s  drop {r['drop_step_s']:.3f} s  measured "
          f"{r['measured_ratio']:.3f}  FLOPs {r['flops_ratio']:.3f}  "
          f"{r['full_tokens_per_s']:.0f} -> {r['drop_tokens_per_s']:.0f} tok/s", flush=True)
  benchmark.write_results({"points": results}, _OUTPUT.value, plot)


def plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  results = results["points"]
  fig, ax = plt.subplots(figsize=(5.5, 5))
  colors = {"size": "#3b75af", "seq_len": "#e1812c", "keep": "#519e3e"}
  for sweep in colors:
    pts = [r for r in results if r["sweep"] == sweep]
    ax.scatter([r["flops_ratio"] for r in pts], [r["measured_ratio"] for r in pts],
               color=colors[sweep], label=sweep)
    for r in pts:
      ax.annotate(r["point"], (r["flops_ratio"], r["measured_ratio"]), fontsize=8,
                  xytext=(4, -10), textcoords="offset points")
  lo = min(min(r["flops_ratio"], r["measured_ratio"]) for r in results) - 0.05
  ax.plot([lo, 1], [lo, 1], "k--", lw=1, label="measured = analytic")
  ax.set_xlabel("analytic FLOPs ratio (drop / full)")
  ax.set_ylabel("measured step-time ratio (drop / full)")
  ax.set_title("Token-drop step vs full step (CPU)")
  ax.legend(loc="upper left")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  app.run(main)
