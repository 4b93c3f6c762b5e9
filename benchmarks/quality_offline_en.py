"""Quality at equal time and at equal steps: full baseline vs token-drop strategies.

  .venv/bin/python benchmarks/quality_offline_en.py --corpus_dir=../shared/data/offline_en \
      [--strategies=none,loss_ema,frequency,random] [--num_steps=1000] \
      [--sst2_dir=../shared/data/sst2 --sst2_train_examples=8000 --sst2_seeds=0,1,2]

Pretrains `configs/small.py` (6 layers, hidden 256, seq 256, keep 128) once per
strategy on the offline corpus (train.txt.gz; validation = valid.txt.gz), the
same number of steps each, evaluating the **full** model on the validation
split every `--eval_every` steps. Training time excludes evaluation. Then:
  - plots of validation loss vs training time and vs step (one curve per strategy);
  - a table at equal steps (the last eval) and at equal wall-clock (every run's
    loss interpolated at the shortest run's total training time);
  - optionally fine-tunes each on SST-2 with identical settings (`--sst2_dir`),
    once per seed (`--sst2_seeds`), and reports each encoder's mean dev accuracy
    and its paired difference from the baseline (same seed, same data order).
Runs resume: re-running skips finished pretraining and fine-tuning runs.
Writes benchmarks/results/quality_offline_en.{json,png}.
"""
from __future__ import annotations

import importlib.util
import json
import math
import os

import numpy as np
from absl import app, flags

_CORPUS = flags.DEFINE_string("corpus_dir", "../shared/data/offline_en", "train/valid .txt.gz dir.")
_STRATEGIES = flags.DEFINE_list(
    "strategies", ["none", "loss_ema", "frequency", "random"],
    "Config variants of configs/small.py: a strategy, optionally with options beyond the paper "
    "(e.g. loss_ema+sctd, random+layerwise, loss_ema+schedule).")
_STEPS = flags.DEFINE_integer("num_steps", 1000, "Pretraining steps per strategy.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Global batch (16: ~20-30 min per run on 2 cores).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 100, "Full-model eval interval.")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/quality", "Where the runs go.")
_SST2 = flags.DEFINE_string("sst2_dir", "", "GLUE SST-2 dir (train.tsv, dev.tsv); '' = skip.")
_SST2_EPOCHS = flags.DEFINE_integer("sst2_epochs", 1, "Fine-tuning epochs.")
_SST2_SEEDS = flags.DEFINE_list(
    "sst2_seeds", ["0"], "Fine-tuning seeds (classifier init, dropout, data order): every "
    "encoder is fine-tuned once per seed, seeds outermost, so an interrupted run still "
    "covers every encoder for the seeds it finished.")
_SST2_EXAMPLES = flags.DEFINE_integer(
    "sst2_train_examples", 0, "Fine-tune on this many training examples (a fixed random "
    "sample, the same for every run); 0 = all 67k (~25 min per run for `small` on 2 cores).")
_WARMUP = flags.DEFINE_integer("warmup_steps", -1, "LR warm-up steps; -1 = 10% of --num_steps.")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Train nothing: report finished pretraining and fine-tuning runs.")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/quality_offline_en.json", "JSON path.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(path, arg):
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def curves(workdir):
  """[(step, train_time_s, eval_loss, quiet_clock_s)] from a run's metrics.jsonl.

  train_time_s is the measured training time (evaluation excluded). The quiet
  clock rebuilds it from the 10th-percentile step time of each kind of logging
  window (grouped by kept fraction, so a keep schedule's stages each get
  their own): on a shared machine, other jobs slow some windows of one run
  and not another's; the fast windows are the ones where the run had the
  machine to itself.
  """
  from tokendrop_jax.training import metrics
  rows = metrics.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  logged = sorted((r["step"], r["train_time_s"], r["step_time_s"], r["kept_fraction"])
                  for r in rows if "train_time_s" in r)
  steps, times, step_times, kept = np.asarray(logged, dtype=np.float64).T
  window = np.diff(steps, prepend=0.0)
  quiet = {k: np.percentile(step_times[kept == k], 10) for k in set(kept)}
  quiet_clock = np.cumsum(window * np.asarray([quiet[k] for k in kept]))
  # Training time at each eval step, interpolated between the logged steps around it.
  return [(r["step"], float(np.interp(r["step"], steps, times)), r["eval/loss"],
           float(np.interp(r["step"], steps, quiet_clock)))
          for r in rows if "eval/loss" in r]


def sst2_train_file(workdir: str) -> str:
  """SST-2 train.tsv, or a fixed random sample of --sst2_train_examples of it."""
  path = os.path.join(_SST2.value, "train.tsv")
  if not _SST2_EXAMPLES.value:
    return path
  with open(path, encoding="utf-8") as f:
    header, *rows = f.readlines()
  rng = np.random.default_rng(0)
  keep = np.sort(rng.choice(len(rows), size=min(_SST2_EXAMPLES.value, len(rows)), replace=False))
  out = os.path.join(workdir, f"sst2_train_{len(keep)}.tsv")
  with open(out + ".tmp", "w", encoding="utf-8") as f:
    f.writelines([header] + [rows[i] for i in keep])
  os.replace(out + ".tmp", out)
  return out


def sst2_dir(workdir: str, seed: int) -> str:
  """A fine-tuning run's directory; seed 0 keeps the single-seed runs' name."""
  suffix = f"_{_SST2_EXAMPLES.value}" if _SST2_EXAMPLES.value else ""
  return workdir + "_sst2" + suffix + (f"_seed{seed}" if seed else "")


def finetune_sst2(runs):
  """Fine-tunes every encoder on SST-2 once per seed; adds the dev accuracies to `runs`.

  Paired differences: for each seed, an encoder's accuracy minus the first
  strategy's (the baseline) under the same seed, so the classifier init,
  dropout and data order are shared and only the encoder differs. Means and
  differences use only the seeds that every encoder finished.
  """
  from tokendrop_jax.training import finetune_loop
  train_file = sst2_train_file(_WORKDIR.value)
  for seed in map(int, _SST2_SEEDS.value):
    for r in runs.values():
      ft = _load("configs/glue.py", "sst2")
      ft.init_from = r["workdir"]
      ft.data.update(train_file=train_file, eval_file=os.path.join(_SST2.value, "dev.tsv"),
                     seq_len=64, seed=seed)
      ft.optim.learning_rate = 1e-4
      ft.train.update(num_epochs=_SST2_EPOCHS.value, seed=seed, log_every=200)
      ft_dir = sst2_dir(r["workdir"], seed)
      results_path = os.path.join(ft_dir, "results.json")
      if not os.path.exists(results_path) and not _REPORT_ONLY.value:
        finetune_loop.train_and_evaluate(ft, ft_dir)
      if os.path.exists(results_path):
        with open(results_path) as f:
          r.setdefault("sst2_dev_accuracy_by_seed", {})[seed] = json.load(f)["best"]["accuracy"]
  # Statistics over the seeds every encoder finished, so all means share their seeds.
  by_seed = [r.get("sst2_dev_accuracy_by_seed", {}) for r in runs.values()]
  seeds = sorted(set.intersection(*(set(a) for a in by_seed)))
  if not seeds:
    return
  base = by_seed[0]
  for r, accs in zip(runs.values(), by_seed):
    a = np.asarray([accs[k] for k in seeds])
    d = a - np.asarray([base[k] for k in seeds])
    r["sst2_seeds"] = seeds
    r["sst2_dev_accuracy"] = float(a.mean())
    r["sst2_dev_accuracy_std"] = float(a.std(ddof=1)) if len(seeds) > 1 else None
    r["sst2_paired_diff"] = float(d.mean())
    r["sst2_paired_diff_sem"] = float(d.std(ddof=1) / np.sqrt(len(seeds))) if len(seeds) > 1 else None


def warmup_steps():
  return _WARMUP.value if _WARMUP.value >= 0 else _STEPS.value // 10


def main(argv):
  del argv
  from tokendrop_jax import benchmark
  from tokendrop_jax.training import loop

  os.makedirs(_WORKDIR.value, exist_ok=True)
  runs = {}
  for strategy in _STRATEGIES.value:
    config = _load("configs/small.py", strategy)
    config.data.update(train_files=os.path.join(_CORPUS.value, "train.txt.gz"),
                       valid_files=os.path.join(_CORPUS.value, "valid.txt.gz"),
                       dataset_dir=os.path.join(_WORKDIR.value, "data"),
                       tokenizer_model=os.path.join(_WORKDIR.value, "tokenizer.model")
                       if os.path.exists(os.path.join(_WORKDIR.value, "tokenizer.model")) else "")
    config.data.global_batch_size = _BATCH.value
    config.optim.warmup_steps = warmup_steps()
    config.train.update(num_steps=_STEPS.value, eval_every=_EVAL_EVERY.value,
                        log_every=math.gcd(_EVAL_EVERY.value, 10), checkpoint_every=_EVAL_EVERY.value)
    workdir = os.path.join(_WORKDIR.value, strategy)
    if not os.path.exists(os.path.join(workdir, "summary.json")):
      if _REPORT_ONLY.value:
        print(f"{strategy}: no finished run in {workdir}; skipped")
        continue
      loop.train_and_evaluate(config, workdir)
    shared_tok = os.path.join(_WORKDIR.value, "tokenizer.model")
    if not os.path.exists(shared_tok):  # every strategy uses the first run's tokenizer
      with open(os.path.join(workdir, "tokenizer.model"), "rb") as src, open(shared_tok, "wb") as dst:
        dst.write(src.read())
    runs[strategy] = {"workdir": workdir, "curve": curves(workdir)}

  budget = min(r["curve"][-1][1] for r in runs.values())  # shortest total training time
  quiet_budget = min(r["curve"][-1][3] for r in runs.values())
  for strategy, r in runs.items():
    steps, times, losses, quiet_clock = map(np.asarray, zip(*r["curve"]))
    r["equal_steps_loss"] = float(losses[-1])
    r["equal_time_loss"] = float(np.interp(budget, times, losses))
    r["equal_quiet_time_loss"] = float(np.interp(quiet_budget, quiet_clock, losses))
    r["total_train_time_s"] = float(times[-1])
    r["total_quiet_clock_s"] = float(quiet_clock[-1])
  if _SST2.value:
    finetune_sst2(runs)
  results = {"num_steps": _STEPS.value, "sst2_train_examples": _SST2_EXAMPLES.value or "all",
             "sst2_epochs": _SST2_EPOCHS.value, "sst2_seeds": list(map(int, _SST2_SEEDS.value)),
             "batch_size": _BATCH.value, "warmup_steps": warmup_steps(),
             "eval_every": _EVAL_EVERY.value, "equal_time_budget_s": budget,
             "equal_quiet_time_budget_s": quiet_budget, "runs": runs}
  for strategy, r in runs.items():
    print(f"{strategy:18s} equal steps: val loss {r['equal_steps_loss']:.4f} | equal time "
          f"({budget:.0f} s): {r['equal_time_loss']:.4f} | total {r['total_train_time_s']:.0f} s"
          f" | quiet clock ({quiet_budget:.0f} s): {r['equal_quiet_time_loss']:.4f}, total "
          f"{r['total_quiet_clock_s']:.0f} s"
          + (f" | SST-2 dev {r['sst2_dev_accuracy']:.4f} over "
             f"{len(r['sst2_seeds'])} seeds" if "sst2_dev_accuracy" in r else "")
          + (f", {r['sst2_paired_diff']:+.4f} vs the baseline" if "sst2_paired_diff" in r else ""))
  benchmark.write_results(results, _OUTPUT.value, lambda r, png: plot(r["runs"], png))


def plot(runs, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
  for strategy, r in runs.items():
    steps, times, losses, quiet = zip(*r["curve"])
    axes[0].plot(np.asarray(times) / 60, losses, label=strategy)
    axes[1].plot(np.asarray(quiet) / 60, losses, label=strategy)
    axes[2].plot(steps, losses, label=strategy)
  axes[0].set_xlabel("measured training time (min)")
  axes[1].set_xlabel("quiet-clock training time (min, p10 step time)")
  axes[2].set_xlabel("step")
  axes[0].set_ylabel("full-model validation MLM loss")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  app.run(main)
