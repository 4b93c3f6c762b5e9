"""Quality at equal time and at equal steps: full baseline vs token-drop strategies.

  .venv/bin/python benchmarks/quality_offline_en.py --corpus_dir=../shared/data/offline_en \
      [--strategies=none,loss_ema,frequency,random] [--pretrain_seeds=0] [--num_steps=1000] \
      [--sst2_dir=../shared/data/sst2 --sst2_train_examples=8000 --sst2_seeds=0,1,2]

Pretrains `configs/small.py` (6 layers, hidden 256, seq 256, keep 128) once per
strategy and pretraining seed on the offline corpus (train.txt.gz; validation =
valid.txt.gz), the same number of steps each, evaluating the **full** model on
the validation split every `--eval_every` steps. Training time excludes
evaluation. Then:
  - plots of validation loss vs training time and vs step (one curve per run);
  - a table at equal steps (the last eval) and at equal wall-clock (every run's
    loss interpolated at the shortest run's total training time);
  - equal cost: every run's loss at the same time on the **calibrated clock**,
    which charges each step its kind's step time as measured by `calibrate`
    (every strategy's step kinds timed interleaved in one process, kept in the
    JSON). Runs trained on other days, on a busier machine or with an older
    (slower) version of the code compare on it; measured clocks do not;
  - optionally fine-tunes each on SST-2 with identical settings (`--sst2_dir`),
    once per seed (`--sst2_seeds`), and reports each encoder's mean dev accuracy
    and its paired difference from `none` pretrained with the same seed (same
    fine-tuning seed, same data order);
  - `summary`: per strategy, the spread of those figures over pretraining seeds
    and the paired SST-2 difference from `none` with a standard error over both
    levels (pretraining seed, fine-tuning seed); see `summarize`.

A strategy is a `configs/small.py` variant, `strategy[+option...]`, plus
`+random_ties` (token_drop.random_ties). Pretraining seed k sets train.seed (init,
dropout) and data.seed (data order, masking; the validation masks too) to k. A run is
named `<strategy>` for seed 0 and `<strategy>@seed<k>` otherwise, as is its workdir.

Runs are done in order, seeds outermost (`--pretrain_seeds` in the order given),
and the JSON is rewritten after each pretraining run and each fine-tuning run
finishes, merged with what it already holds: a run it holds complete is skipped,
an unfinished one resumes from its checkpoints (the project's exact resume), so
an interrupted command, rerun, goes on where it stopped.
Writes benchmarks/results/quality_offline_en.{json,png}.

--train_time_s=T (equal wall-clock budgets; benchmarks/quality_gpu.sh): every
run gets its own number of steps, planned to take T seconds of training. Each
strategy's run-average step time is measured first (`calibrate`: the train
main's own jitted step of every kind the run takes, timed interleaved on one
synthetic batch, weighted by how many steps take each kind) and kept in the
JSON, so a rerun plans the same steps and resumes. Each run then evaluates
--evals_per_run times and warms up over 10% of its steps.
"""
from __future__ import annotations

import datetime
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
    "(e.g. loss_ema+sctd, random+layerwise, loss_ema+schedule, loss_ema+random_ties).")
_PRETRAIN_SEEDS = flags.DEFINE_list(
    "pretrain_seeds", ["0"], "Pretraining seeds (train.seed and data.seed), run in this order, "
    "each over all --strategies; seed 0's runs keep the unsuffixed names.")
_STEPS = flags.DEFINE_integer("num_steps", 1000, "Pretraining steps per strategy.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Global batch (16: ~20-30 min per run on 2 cores).")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 100, "Full-model eval interval.")
_WORKDIR = flags.DEFINE_string("workdir", "workdir/quality", "Where the runs go.")
_SST2 = flags.DEFINE_string("sst2_dir", "", "GLUE SST-2 dir (train.tsv, dev.tsv); '' = skip.")
_SST2_EPOCHS = flags.DEFINE_integer("sst2_epochs", 1, "Fine-tuning epochs.")
_SST2_SEEDS = flags.DEFINE_list(
    "sst2_seeds", ["0"], "Fine-tuning seeds (classifier init, dropout, data order): every "
    "encoder is fine-tuned once per seed, right after its pretraining.")
_SST2_EXAMPLES = flags.DEFINE_integer(
    "sst2_train_examples", 0, "Fine-tune on this many training examples (a fixed random "
    "sample, the same for every run); 0 = all 67k (~25 min per run for `small` on 2 cores).")
_WARMUP = flags.DEFINE_integer("warmup_steps", -1, "LR warm-up steps; -1 = 10% of --num_steps.")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Train nothing: report finished pretraining and fine-tuning runs.")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/quality_offline_en.json", "JSON path.")
_MODEL_CONFIG = flags.DEFINE_string("model_config", "configs/small.py", "Config file of every run.")
_DTYPE = flags.DEFINE_string("dtype", "", "model.dtype of every run ('' = the config's).")
_TRAIN_TIME = flags.DEFINE_float(
    "train_time_s", 0.0, "Equal wall-clock budgets: each run's steps are planned to take this "
    "long (from its strategy's measured step time); 0 = every run takes --num_steps.")
_EVALS = flags.DEFINE_integer("evals_per_run", 10, "With --train_time_s: evaluations per run.")
_DATA_WORKERS = flags.DEFINE_integer("data_workers", 0, "data.worker_count of every run.")
_CALIBRATE_ONLY = flags.DEFINE_bool(
    "calibrate_only", False, "Measure the step costs of every strategy the JSON holds and "
    "--strategies names (the calibrated clock; replaces the JSON's), write the JSON, train "
    "nothing. Without it, a fixed-step command calibrates only when a strategy has no cost yet.")
_CACHE = flags.DEFINE_string("compilation_cache_dir", "", "JAX's persistent compilation cache "
                             "('' = none): the calibration's compiles serve the runs.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASELINE = "none"
# Top-level settings every run in one JSON shares; a command with others is refused.
SHARED_SETTINGS = ("num_steps", "batch_size", "warmup_steps", "eval_every",
                   "sst2_train_examples", "sst2_epochs", "model_config", "dtype", "train_time_s")
# Fields of a run's config.json that a resume must find unchanged (beyond loop's own).
RESUME_FIELDS = ("token_drop", "train.seed", "train.num_steps", "data.seed",
                 "data.global_batch_size", "optim")


def _load(path, arg):
  from tokendrop_jax import config_lib
  return config_lib.load_file(os.path.join(ROOT, path), arg)


# ---------------------------------------------------------------------------
# Names.


def run_name(strategy: str, seed: int) -> str:
  """Seed 0 keeps the single-seed runs' name (and workdir)."""
  return strategy if seed == 0 else f"{strategy}@seed{seed}"


def parse_run_name(name: str) -> tuple[str, int]:
  strategy, _, seed = name.partition("@seed")
  return strategy, int(seed) if seed else 0


def pretrain_config(strategy: str, seed: int, model_config: str = "configs/small.py",
                    dtype: str = ""):
  """<model_config>:<strategy> with pretraining seed `seed`; `+random_ties` is ours
  unless config_lib knows it."""
  from tokendrop_jax import config_lib
  parts = strategy.split("+")
  ties = "random_ties" in parts[1:] and "random_ties" not in config_lib.OPTIONS
  config = _load(model_config, "+".join(p for p in parts if not (ties and p == "random_ties")))
  if dtype:
    config.model.dtype = dtype
  if ties:
    config.token_drop.random_ties = True
  config.train.seed = seed
  config.data.seed = seed
  return config


def run_plan(strategy: str, calibration: dict | None) -> dict:
  """Steps, eval interval and warm-up of one run: the flags' (equal steps), or planned
  from the strategy's calibrated step time (--train_time_s)."""
  if not _TRAIN_TIME.value:
    return {"num_steps": _STEPS.value, "eval_every": _EVAL_EVERY.value,
            "warmup_steps": warmup_steps()}
  n = calibration[strategy]["num_steps"]
  return {"num_steps": n, "eval_every": max(1, n // _EVALS.value), "warmup_steps": n // 10}


def planned_steps(train_time_s: float, step_s: float) -> int:
  return max(1, int(train_time_s // step_s))


def _kind_name(kind) -> str:
  return ("full" if kind.full else f"keep{kind.keep_tokens}") + ("+sctd" if kind.consistency else "")


def calibrate(configs: dict, steps: int = 8, warmup: int = 2) -> dict[str, dict]:
  """Each strategy's run-average seconds per step, for `configs` {strategy: config}.

  The train main's own jitted step of every kind each run takes (full, drop,
  drop + ScTD, each stage of a keep schedule) is timed on one synthetic batch,
  all strategies' steps interleaved in one loop so that machine noise hits
  them alike (median of `steps`), then weighted by the share of the run's
  steps that take each kind (`step_plan.kind_counts`). Returns, per strategy,
  those times and the `num_steps` --train_time_s plans.
  """
  import flax.linen as nn
  import jax

  from tokendrop_jax import benchmark, synthetic
  from tokendrop_jax.training import loop, sharding, step_plan
  fns, states, counts, run = {}, {}, {}, None
  for strategy, config in configs.items():
    vocab = config.model.vocab_size
    run = loop.build(config, synthetic.SPECIAL_IDS, token_counts=np.ones((vocab,), np.int64))
    counts[strategy] = step_plan.kind_counts(config)
    for kind in counts[strategy]:
      name = f"{strategy}/{_kind_name(kind)}"
      fns[name], states[name] = run.train_steps[kind], run.init_state()
  data = config.data  # the batch shape every run shares
  batch = jax.device_put(synthetic.mlm_batch(0, data.global_batch_size, data.seq_len,
                                             data.max_predictions_per_seq, vocab),
                         sharding.batch_sharding(run.layout.mesh))
  with jax.set_mesh(run.layout.mesh), nn.logical_axis_rules(run.layout.rules):
    times, _ = benchmark.time_steps(fns, states, batch, steps, warmup)
  med, out = benchmark.medians(times), {}
  for strategy, kinds in counts.items():
    step_s = {_kind_name(k): med[f"{strategy}/{_kind_name(k)}"] for k in kinds}
    total = sum(kinds.values())
    mean = sum(c * step_s[_kind_name(k)] for k, c in kinds.items()) / total
    out[strategy] = {"step_s": mean, "step_s_by_kind": step_s,
                     "kind_shares": {_kind_name(k): c / total for k, c in kinds.items()}}
    if _TRAIN_TIME.value:
      out[strategy]["num_steps"] = planned_steps(_TRAIN_TIME.value, mean)
    print(f"calibration {strategy}: {mean * 1e3:.1f} ms per step ("
          + ", ".join(f"{n} {t * 1e3:.1f} ms" for n, t in step_s.items()) + ")", flush=True)
  return out


def step_kind_names(config) -> list[str]:
  """The kind of each of the run's `train.num_steps` steps, in order (`step_plan.kind_at`)."""
  from tokendrop_jax.training import step_plan
  return [_kind_name(step_plan.kind_at(config, i)) for i in range(config.train.num_steps)]


def cost_clock(kind_names: list[str], step_s_by_kind: dict, steps) -> list[float]:
  """The calibrated clock after each of `steps`: the seconds the run's first s steps
  take when each costs its kind's calibrated step time."""
  total = np.concatenate([[0.0], np.cumsum([step_s_by_kind[k] for k in kind_names])])
  return [float(total[s]) for s in steps]


def cost_clocks(results: dict) -> dict[str, list[float]]:
  """{run: its calibrated clock at each point of its curve}, for the runs whose
  strategy the JSON's calibration covers."""
  calibration, out = results.get("calibration") or {}, {}
  for name, r in results["runs"].items():
    cost = calibration.get(r.get("strategy"))
    if not r.get("curve") or not cost:
      continue
    config = pretrain_config(r["strategy"], r["pretrain_seed"],
                             results.get("model_config") or "configs/small.py",
                             results.get("dtype") or "")
    config.train.num_steps = r.get("num_steps") or results["num_steps"]
    out[name] = cost_clock(step_kind_names(config), cost["step_s_by_kind"],
                           [int(p[0]) for p in r["curve"]])
  return out


# ---------------------------------------------------------------------------
# Measurements of one run.


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


def finetune_config(workdir: str, train_file: str, seed: int):
  ft = _load("configs/glue.py", "sst2")
  ft.init_from = workdir
  ft.data.update(train_file=train_file, eval_file=os.path.join(_SST2.value, "dev.tsv"),
                 seq_len=64, seed=seed)
  ft.optim.learning_rate = 1e-4
  ft.train.update(num_epochs=_SST2_EPOCHS.value, seed=seed, log_every=200)
  return ft


def accuracies(r: dict) -> dict[int, float]:
  """A run's SST-2 dev accuracy by fine-tuning seed (JSON keys are strings)."""
  return {int(k): v for k, v in r.get("sst2_dev_accuracy_by_seed", {}).items()}


# ---------------------------------------------------------------------------
# Statistics (pure: the JSON's runs in, numbers out).


def _sd(x):
  return float(np.std(x, ddof=1)) if len(x) > 1 else None


def _se(x):
  return float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else None


def _spread(by_seed: dict) -> dict:
  x = np.asarray(list(by_seed.values()), dtype=np.float64)
  return {"mean": float(x.mean()), "sd": _sd(x), "se": _se(x), "min": float(x.min()),
          "max": float(x.max()), "n": len(x), "by_seed": dict(by_seed)}


def add_run_figures(runs: dict, clocks: dict | None = None) -> dict:
  """Adds each run's equal-step/equal-time losses and SST-2 figures; returns the budgets.

  Equal time: every run's loss at the shortest total training time among all the
  runs (measured, and on the quiet clock); and, when `clocks` ({run: calibrated
  clock at each curve point}, `cost_clocks`) covers every run, at the shortest
  total on the calibrated clock (equal cost). SST-2: mean and sd over the run's
  fine-tuning seeds, and the paired difference from `none` with the same
  pretraining seed over the fine-tuning seeds both finished.
  """
  done = {name: r for name, r in runs.items() if r.get("curve")}
  clocks = clocks or {}
  budgets = {}
  if done:
    budgets = {"equal_time_budget_s": min(r["curve"][-1][1] for r in done.values()),
               "equal_quiet_time_budget_s": min(r["curve"][-1][3] for r in done.values())}
  costed = bool(done) and set(done) <= set(clocks)
  if costed:
    budgets["equal_cost_budget_s"] = min(clocks[name][-1] for name in done)
  for name, r in done.items():
    for key in ("cost_clock_s", "equal_cost_loss", "total_cost_s"):
      r.pop(key, None)
    if costed:
      clock, losses = np.asarray(clocks[name]), np.asarray([p[2] for p in r["curve"]])
      r.update(cost_clock_s=[float(c) for c in clock], total_cost_s=float(clock[-1]),
               equal_cost_loss=float(np.interp(budgets["equal_cost_budget_s"], clock, losses)))
  for r in done.values():
    steps, times, losses, quiet_clock = map(np.asarray, zip(*r["curve"]))
    r["equal_steps_loss"] = float(losses[-1])
    r["equal_time_loss"] = float(np.interp(budgets["equal_time_budget_s"], times, losses))
    r["equal_quiet_time_loss"] = float(
        np.interp(budgets["equal_quiet_time_budget_s"], quiet_clock, losses))
    r["total_train_time_s"] = float(times[-1])
    r["total_quiet_clock_s"] = float(quiet_clock[-1])
  for r in runs.values():
    for key in ("sst2_seeds", "sst2_dev_accuracy", "sst2_dev_accuracy_std", "sst2_paired_diff",
                "sst2_paired_diff_sem"):
      r.pop(key, None)
    accs = accuracies(r)
    if not accs:
      continue
    seeds = sorted(accs)
    a = np.asarray([accs[k] for k in seeds])
    r.update(sst2_seeds=seeds, sst2_dev_accuracy=float(a.mean()), sst2_dev_accuracy_std=_sd(a))
    base = runs.get(run_name(BASELINE, r["pretrain_seed"]))
    common = sorted(set(accs) & set(accuracies(base))) if base else []
    if common:
      d = np.asarray([accs[k] - accuracies(base)[k] for k in common])
      r.update(sst2_paired_diff=float(d.mean()), sst2_paired_diff_sem=_se(d))
  return budgets


def summarize(runs: dict, baseline: str = BASELINE) -> dict:
  """Per strategy, its figures over pretraining seeds (runs as `add_run_figures` left them).

  - Validation loss at equal steps, equal quiet time and equal cost: mean, sd, min, max over
    the pretraining seeds; and the difference from `baseline` with the same
    pretraining seed (mean, sd, se = sd / sqrt(n)).
  - SST-2 dev accuracy: the paired difference from `baseline`, paired on
    (pretraining seed, fine-tuning seed). `mean` is the mean over all pairs; per
    pretraining seed, the mean over its fine-tuning seeds (`by_seed`). `se` is the
    sd of those per-seed means over sqrt(number of pretraining seeds): it holds
    both levels of noise, since each per-seed mean carries its fine-tuning noise
    (None below 2 pretraining seeds). `se_within`: the fine-tuning noise alone,
    sqrt(sum of per-seed squared standard errors) / number of pretraining seeds.
  """
  by_strategy: dict[str, dict[int, dict]] = {}
  for r in runs.values():
    by_strategy.setdefault(r["strategy"], {})[r["pretrain_seed"]] = r
  base = by_strategy.get(baseline, {})
  out = {}
  for strategy, seeds in by_strategy.items():
    s = {"pretrain_seeds": sorted(seeds)}
    for key in ("equal_steps_loss", "equal_quiet_time_loss", "equal_cost_loss"):
      values = {k: r[key] for k, r in sorted(seeds.items()) if key in r}
      if values:
        s[key] = _spread(values)
      diffs = {k: v - base[k][key] for k, v in values.items() if key in base.get(k, {})}
      if diffs and strategy != baseline:
        s[key + "_diff"] = _spread(diffs)
    accs = {k: accuracies(r) for k, r in sorted(seeds.items()) if accuracies(r)}
    if accs:
      s["sst2_dev_accuracy"] = _spread({k: float(np.mean(list(a.values()))) for k, a in accs.items()})
    pairs = {}
    for k, a in accs.items():
      b = accuracies(base.get(k, {}))
      common = sorted(set(a) & set(b))
      if common:
        pairs[k] = np.asarray([a[j] - b[j] for j in common])
    if pairs and strategy != baseline:
      means = np.asarray([d.mean() for d in pairs.values()])
      within = [_se(d) for d in pairs.values()]
      s["sst2_paired_diff"] = {
          "mean": float(np.concatenate(list(pairs.values())).mean()),
          "se": _se(means),
          "se_within": (float(np.sqrt(sum(w * w for w in within))) / len(within)
                        if None not in within else None),
          "n_pretrain_seeds": len(pairs),
          "n_pairs": int(sum(len(d) for d in pairs.values())),
          "by_seed": {k: {"mean": float(d.mean()), "se": _se(d), "n": len(d)}
                      for k, d in pairs.items()}}
    out[strategy] = s
  return out


# ---------------------------------------------------------------------------
# The JSON.


def load_results(path: str, settings: dict) -> dict:
  """The JSON so far (runs named, with strategy and pretraining seed), or a new one.

  Refuses a JSON made with other shared settings: its runs would not compare.
  """
  from tokendrop_jax import benchmark
  results = benchmark.read_results(path)
  if results is None:
    return {**settings, "runs": {}}
  for key in SHARED_SETTINGS:
    if key in results and results[key] != settings[key]:
      raise ValueError(f"{path} holds runs with {key}={results[key]!r}, this command has "
                       f"{settings[key]!r}: pass the same settings, or another --output")
  for name, r in results["runs"].items():
    strategy, seed = parse_run_name(name)
    r.setdefault("strategy", strategy)
    r.setdefault("pretrain_seed", seed)
  results.update({k: v for k, v in settings.items() if k != "sst2_seeds"})
  results["sst2_seeds"] = sorted(set(results.get("sst2_seeds", [])) | set(settings["sst2_seeds"]))
  return results


def write(results: dict, path: str) -> None:
  """Recomputes every derived figure, then writes the JSON and the plot (of the runs with
  a curve, if any)."""
  from tokendrop_jax import benchmark
  runs = results["runs"]
  results.pop("equal_cost_budget_s", None)  # back only if every run has a calibrated clock
  results.update(add_run_figures(runs, cost_clocks(results)))
  results["summary"] = summarize(runs)
  benchmark.write_results(results, path,
                          plot if any(r.get("curve") for r in runs.values()) else None)


def same_losses(a: list, b: list, tol: float = 1e-3) -> bool:
  """Whether two curves have the same eval steps and losses (a retrained run)."""
  return [p[0] for p in a] == [p[0] for p in b] and all(
      abs(p[2] - q[2]) <= tol for p, q in zip(a, b))


def is_complete(r: dict | None, sst2_seeds: list[int]) -> bool:
  return bool(r and r.get("curve")) and (not _SST2.value or set(sst2_seeds) <= set(accuracies(r)))


# ---------------------------------------------------------------------------


def warmup_steps():
  return _WARMUP.value if _WARMUP.value >= 0 else _STEPS.value // 10


def run_config(strategy: str, seed: int, plan: dict):
  """The pretraining config of one run (corpus, batch, schedule from `plan`)."""
  config = pretrain_config(strategy, seed, _MODEL_CONFIG.value, _DTYPE.value)
  shared_tok = os.path.join(_WORKDIR.value, "tokenizer.model")
  config.data.update(train_files=os.path.join(_CORPUS.value, "train.txt.gz"),
                     valid_files=os.path.join(_CORPUS.value, "valid.txt.gz"), demo_corpus=False,
                     dataset_dir=os.path.join(_WORKDIR.value, "data"),
                     tokenizer_model=shared_tok if os.path.exists(shared_tok) else "",
                     worker_count=_DATA_WORKERS.value)
  config.data.global_batch_size = _BATCH.value
  config.optim.warmup_steps = plan["warmup_steps"]
  every = plan["eval_every"]
  config.train.update(num_steps=plan["num_steps"], eval_every=every,
                      log_every=math.gcd(every, 10), checkpoint_every=every)
  return config


def pretrain(strategy: str, seed: int, workdir: str, plan: dict) -> bool:
  """Pretrains (or resumes) the run in `workdir`; False when --report_only leaves it."""
  from tokendrop_jax.training import loop
  from tokendrop_jax.training import workdir as workdir_lib
  if os.path.exists(os.path.join(workdir, "summary.json")):
    return True
  if _REPORT_ONLY.value:
    return False
  config = run_config(strategy, seed, plan)
  shared_tok = os.path.join(_WORKDIR.value, "tokenizer.model")
  if os.path.isdir(workdir):  # a resume must find the run's strategy, seeds and schedule
    workdir_lib.check_resume(config, workdir, RESUME_FIELDS)
  loop.train_and_evaluate(config, workdir)
  if not os.path.exists(os.path.join(workdir, "summary.json")):  # stopped by a signal
    raise SystemExit(f"{workdir}: pretraining stopped before its last step (its checkpoint "
                     "is kept); the same command resumes it")
  if not os.path.exists(shared_tok):  # every run uses the first run's tokenizer
    with open(os.path.join(workdir, "tokenizer.model"), "rb") as src, open(shared_tok, "wb") as dst:
      dst.write(src.read())
  return True


def main(argv):
  del argv
  # Import the training code now, so that the whole command runs one version of it.
  from tokendrop_jax.training import finetune_loop
  for module in ("loop", "metrics", "workdir", "finetune_step", "step"):
    importlib.import_module(f"tokendrop_jax.training.{module}")
  from tokendrop_jax import benchmark
  code = benchmark.code_version()
  print(f"tokendrop_jax: {code}", flush=True)
  sst2_seeds = list(map(int, _SST2_SEEDS.value))
  if _CACHE.value:
    import jax
    jax.config.update("jax_compilation_cache_dir", _CACHE.value)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  timed = bool(_TRAIN_TIME.value)
  if timed and _CALIBRATE_ONLY.value:
    raise app.UsageError("--calibrate_only is for fixed-step runs: with --train_time_s the "
                         "calibration plans the runs' steps and is kept")
  settings = {"num_steps": None if timed else _STEPS.value,
              "sst2_train_examples": _SST2_EXAMPLES.value or "all",
              "sst2_epochs": _SST2_EPOCHS.value, "sst2_seeds": sst2_seeds,
              "batch_size": _BATCH.value, "warmup_steps": None if timed else warmup_steps(),
              "eval_every": None if timed else _EVAL_EVERY.value,
              "model_config": _MODEL_CONFIG.value, "dtype": _DTYPE.value,
              "train_time_s": _TRAIN_TIME.value or None}
  results = load_results(_OUTPUT.value, settings)
  runs = results["runs"]
  os.makedirs(_WORKDIR.value, exist_ok=True)
  calibration = results.setdefault("calibration", {})
  if not _REPORT_ONLY.value:
    todo = to_calibrate(timed, calibration, runs)
    if todo:
      plan, strategies = todo
      if not timed:
        calibration.clear()
      calibration.update(calibrate({s: run_config(s, 0, plan) for s in strategies}))
      # The calibration's own environment: the JSON's is its last writer's.
      results["calibration_info"] = {**benchmark.environment(), "utc": _utc_now()}
      write(results, _OUTPUT.value)
  if _CALIBRATE_ONLY.value:
    return
  train_file = sst2_train_file(_WORKDIR.value) if _SST2.value else ""
  order = [(s, int(k)) for k in _PRETRAIN_SEEDS.value for s in _STRATEGIES.value]
  print("runs, in order: " + ", ".join(
      run_name(s, k) + (" (done)" if is_complete(runs.get(run_name(s, k)), sst2_seeds) else "")
      for s, k in order), flush=True)
  for strategy, seed in order:
    name = run_name(strategy, seed)
    if is_complete(runs.get(name), sst2_seeds):
      continue
    wd = os.path.join(_WORKDIR.value, name)
    had_summary = os.path.exists(os.path.join(wd, "summary.json"))
    plan = run_plan(strategy, calibration if timed else None)
    if not pretrain(strategy, seed, wd, plan):
      print(f"{name}: no finished run in {wd}; skipped", flush=True)
      continue
    r, curve = runs.get(name, {}), curves(wd)
    if r.get("curve") and not had_summary and not same_losses(r["curve"], curve):
      # Pretrained again (its workdir was gone) and not to the same losses: the
      # fine-tuning results the JSON holds are another encoder's.
      print(f"{name}: retrained to other losses than the JSON's; its SST-2 results are "
            "dropped and measured again", flush=True)
      r.pop("sst2_dev_accuracy_by_seed", None)
    if not had_summary:  # pretrained by this command
      r["code"] = code
    r.update(workdir=wd, strategy=strategy, pretrain_seed=seed, curve=curve, **plan,
             tokens=plan["num_steps"] * _BATCH.value * run_config(strategy, seed, plan).data.seq_len,
             pretrained_utc=datetime.datetime.fromtimestamp(
                 os.path.getmtime(os.path.join(wd, "summary.json")),
                 datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"))
    runs[name] = r
    write(results, _OUTPUT.value)
    for ft_seed in sst2_seeds if _SST2.value else []:
      if ft_seed in accuracies(r):
        continue
      ft_dir = sst2_dir(wd, ft_seed)
      results_path = os.path.join(ft_dir, "results.json")
      if not os.path.exists(results_path) and not _REPORT_ONLY.value:
        finetune_loop.train_and_evaluate(finetune_config(wd, train_file, ft_seed), ft_dir)
      if os.path.exists(results_path):
        with open(results_path) as f:
          acc = json.load(f)["best"]["accuracy"]
        r["sst2_dev_accuracy_by_seed"] = {**r.get("sst2_dev_accuracy_by_seed", {}),
                                          str(ft_seed): acc}
        write(results, _OUTPUT.value)
  write(results, _OUTPUT.value)
  print_table(results)


def to_calibrate(timed: bool, calibration: dict, runs: dict) -> tuple[dict, list[str]] | None:
  """(step plan, strategies) whose step costs to measure now, or None.

  Timed runs: the strategies with no cost yet; the costs plan their runs' steps, so
  they are kept, and a rerun plans the same steps and resumes. Equal steps: the costs
  only make the calibrated clock, so every strategy is measured again together (one
  interleaved run) when one has no cost yet, or on --calibrate_only.
  """
  if timed:
    missing = [s for s in _STRATEGIES.value if s not in calibration]
    plan = {"num_steps": _STEPS.value, "eval_every": _STEPS.value, "warmup_steps": 0}
    return (plan, missing) if missing else None
  wanted = sorted(set(_STRATEGIES.value) | {r["strategy"] for r in runs.values()})
  if _CALIBRATE_ONLY.value or not set(wanted) <= set(calibration):
    plan = {"num_steps": _STEPS.value, "eval_every": _EVAL_EVERY.value,
            "warmup_steps": warmup_steps()}
    return plan, wanted
  return None


def _utc_now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")


def print_table(results):
  for name, r in results["runs"].items():
    if not r.get("curve"):
      continue
    print(f"{name:26s} equal steps: val loss {r['equal_steps_loss']:.4f} | equal time: "
          f"{r['equal_time_loss']:.4f} | total {r['total_train_time_s']:.0f} s | quiet clock: "
          f"{r['equal_quiet_time_loss']:.4f}, total {r['total_quiet_clock_s']:.0f} s"
          + (f" | equal cost: {r['equal_cost_loss']:.4f}, total {r['total_cost_s']:.0f} s"
             if "equal_cost_loss" in r else "")
          + (f" | SST-2 dev {r['sst2_dev_accuracy']:.4f} over {len(r['sst2_seeds'])} seeds"
             if "sst2_dev_accuracy" in r else "")
          + (f", {r['sst2_paired_diff']:+.4f} vs {BASELINE}" if "sst2_paired_diff" in r else ""))


def plot(results, path):
  """Validation loss vs measured time, quiet clock and step: seed 0 solid, other
  pretraining seeds dashed in their strategy's colour."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  runs = results["runs"]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
  costed = all("cost_clock_s" in r for r in runs.values() if r.get("curve"))
  colors = {}
  # Seed 0 first, so that each strategy's legend entry shows the solid line.
  for r in sorted(runs.values(), key=lambda r: r["pretrain_seed"]):
    if not r.get("curve"):
      continue
    strategy, seed = r["strategy"], r["pretrain_seed"]
    first = strategy not in colors
    color = colors.setdefault(strategy, f"C{len(colors) % 10}")
    steps, times, losses, quiet = zip(*r["curve"])
    style = dict(color=color, linestyle="-" if seed == 0 else "--", linewidth=1.5 if seed == 0 else 1,
                 label=strategy if first else None)
    axes[0].plot(np.asarray(times) / 60, losses, **style)
    axes[1].plot(np.asarray(r["cost_clock_s"] if costed else quiet) / 60, losses, **style)
    axes[2].plot(steps, losses, **style)
  axes[0].set_xlabel("measured training time (min)")
  axes[1].set_xlabel("calibrated clock (min): each step at its kind's measured time" if costed
                     else "quiet-clock training time (min, p10 step time)")
  axes[2].set_xlabel("step (dashed: other pretraining seeds)")
  axes[0].set_ylabel("full-model validation MLM loss")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  app.run(main)
