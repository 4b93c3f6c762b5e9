"""Markdown tables of the benchmark results, for the README (reads benchmarks/results/*.json).

  python benchmarks/report.py

Prints only what the JSON files hold; a missing file is reported as not run.
"""
from __future__ import annotations

import json
import os

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _load(name):
  path = os.path.join(RESULTS, name)
  if not os.path.exists(path):
    print(f"\n(`{name}` not run yet)\n")
    return None
  with open(path) as f:
    return json.load(f)


def _environment(r):
  """The JSON's `environment` (the harness's); JSONs from before it have its fields at the top."""
  return r.get("environment", r)


def step_table():
  rows = []
  for name in ("step_bench_cpu.json", "step_demo.json"):
    r = _load(name)
    if r:
      rows.append(r)
  sweep = _load("speed_sweep.json") or []
  sweep = sweep["points"] if isinstance(sweep, dict) else sweep  # a bare list before `points`
  print("| point | layers | batch × seq | keep | full step | drop step | measured drop/full "
        "| FLOPs drop/full | tokens/s full → drop |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for r in rows + sweep:
    print(f"| {r.get('point', r['config'])} | {r['num_layers']} | {r['batch_size']} × {r['seq_len']} "
          f"| {r['keep_tokens']} | {r['full_step_s']:.3f} s | {r['drop_step_s']:.3f} s "
          f"| **{r['measured_ratio']:.3f}** | {r['flops_ratio']:.3f} "
          f"| {r['full_tokens_per_s']:,.0f} → {r['drop_tokens_per_s']:,.0f} |")


def peer_table():
  r = _load("peer_flax_bert.json")
  if not r:
    return
  m = r["median_step_s"]
  print(f"| step ({r['config']}: batch {r['batch_size']}, seq {r['seq_len']}) | median time "
        "| relative to the peer |")
  print("| --- | --- | --- |")
  print(f"| HF `FlaxBertForMaskedLM` + optax AdamW | {m['flax_bert_peer']:.3f} s | 1.00 |")
  print(f"| tokendrop_jax, full model | {m['ours_full']:.3f} s | **{r['ours_full_over_peer']:.2f}** |")
  print(f"| tokendrop_jax, token drop (keep {r['keep_tokens']}) | {m['ours_drop']:.3f} s "
        f"| **{r['ours_drop_over_peer']:.2f}** |")


def _run_key(name, r):
  """(pretraining seed, strategy) of a run; JSONs before pretraining seeds lack the fields."""
  strategy, _, seed = name.partition("@seed")
  return r.get("pretrain_seed", int(seed) if seed else 0), r.get("strategy", strategy)


def _pm(s, scale=1.0, digits=3, sign=False):
  """'mean ± sd [min, max]' of a summary spread (sd and range only over 2+ seeds)."""
  fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
  text = fmt.format(s["mean"] * scale)
  if s.get("sd") is not None:
    text += f" ± {s['sd'] * scale:.{digits}f} [{s['min'] * scale:.{digits}f}, " \
            f"{s['max'] * scale:.{digits}f}]"
  return text


def quality_table():
  q = _load("quality_offline_en.json")
  if not q:
    return
  runs = q["runs"]
  keys = {name: _run_key(name, r) for name, r in runs.items()}
  base = {seed: r for name, r in runs.items() for seed, strategy in [keys[name]]
          if strategy == "none"}
  costed = "equal_cost_budget_s" in q
  cost = (f", {q['equal_cost_budget_s']:.0f} s calibrated clock" if costed else "")
  print(f"Budget for equal time: {q['equal_time_budget_s']:.0f} s measured, "
        f"{q['equal_quiet_time_budget_s']:.0f} s quiet clock{cost} (the fastest run's total).\n")
  print("| variant | training time, measured (quiet clock) | vs `none` | val loss at "
        f"{q['num_steps']} steps | at equal measured time | at equal quiet time "
        + ("| calibrated clock (vs `none`) | at equal cost " if costed else "")
        + "| SST-2 dev acc, mean ± sd (seeds) | vs `none`, paired ± s.e. |")
  print("| --- " * (10 if costed else 8) + "|")
  # Pretraining seed 0 first (the single-seed table), then the other seeds, each in run order.
  for name in sorted(runs, key=lambda n: keys[n][0]):
    r = runs[name]
    if not r.get("curve"):
      continue
    b = base.get(keys[name][0])
    ratio = (f"{r['total_train_time_s'] / b['total_train_time_s']:.2f}× "
             f"({r['total_quiet_clock_s'] / b['total_quiet_clock_s']:.2f}×)") if b else "-"
    acc, diff = "not run", "-"
    if "sst2_dev_accuracy" in r:
      n = len(r.get("sst2_seeds", [0]))
      sd = f" ± {r['sst2_dev_accuracy_std']:.3f}" if r.get("sst2_dev_accuracy_std") else ""
      acc = f"{r['sst2_dev_accuracy']:.3f}{sd} ({n})"
    if r.get("sst2_paired_diff") is not None and r is not b:
      sem = f" ± {r['sst2_paired_diff_sem'] * 100:.1f}" if r.get("sst2_paired_diff_sem") else ""
      diff = f"{r['sst2_paired_diff'] * 100:+.1f}{sem} pts"
    cells = ""
    if costed:
      vs = f" ({r['total_cost_s'] / b['total_cost_s']:.3f}×)" if b else ""
      cells = f"| {r['total_cost_s']:.0f} s{vs} | {r['equal_cost_loss']:.3f} "
    print(f"| `{name}` | {r['total_train_time_s']:.0f} s ({r['total_quiet_clock_s']:.0f} s) | {ratio} "
          f"| {r['equal_steps_loss']:.3f} | {r['equal_time_loss']:.3f} "
          f"| {r['equal_quiet_time_loss']:.3f} {cells}| {acc} | {diff} |")
  seeds_table(q, keys)
  probe_table()


def seeds_table(q, keys):
  """Strategies pretrained with more than seed 0: their figures over pretraining seeds."""
  summary = q.get("summary", {})
  rerun = {strategy for seed, strategy in keys.values() if seed != 0}
  rows = [(s, e) for s, e in summary.items() if s in rerun]
  if not rows:
    return
  # Equal cost (the calibrated clock) where the JSON has it: the seeds' runs were trained
  # on different days and code versions, and their measured and quiet clocks do not compare.
  key, label, budget = "equal_cost_loss", "equal cost", q.get("equal_cost_budget_s")
  if budget is None:
    key, label, budget = "equal_quiet_time_loss", "equal quiet time", q["equal_quiet_time_budget_s"]
  print(f"\nOver pretraining seeds (mean ± sd [min, max] over the seeds; differences from `none` "
        f"with the same pretraining seed; {label} = {budget:.0f} s):\n")
  print(f"| variant | pretraining seeds | val loss at {q['num_steps']} steps | vs `none` "
        f"| at {label} | vs `none` | SST-2 dev acc | vs `none`, paired ± s.e. "
        "(both levels; fine-tuning only) | pairs |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for strategy, e in rows:
    cells = [f"`{strategy}`", ", ".join(map(str, e["pretrain_seeds"]))]
    for k in ("equal_steps_loss", key):
      cells.append(_pm(e[k]) if k in e else "-")
      d = e.get(k + "_diff")
      cells.append(f"{d['mean']:+.3f}" + (f" ± {d['se']:.3f}" if d.get("se") is not None else "")
                   if d else "-")
    cells.append(_pm(e["sst2_dev_accuracy"]) if "sst2_dev_accuracy" in e else "not run")
    p = e.get("sst2_paired_diff")
    if p:
      se = f"{p['se'] * 100:.1f}" if p.get("se") is not None else "-"
      within = f"{p['se_within'] * 100:.1f}" if p.get("se_within") is not None else "-"
      cells.append(f"{p['mean'] * 100:+.1f} ± {se} ({within}) pts")
      cells.append(f"{p['n_pretrain_seeds']} × {p['n_pairs'] // p['n_pretrain_seeds']}"
                   if p["n_pairs"] % p["n_pretrain_seeds"] == 0 else str(p["n_pairs"]))
    else:
      cells += ["-", "-"]
    print("| " + " | ".join(cells) + " |")
  print("\nPaired SST-2 difference from `none` by pretraining seed, in points (mean ± s.e. over "
        "the fine-tuning seeds):\n")
  seeds = sorted({k for _, e in rows for k in e.get("sst2_paired_diff", {}).get("by_seed", {})},
                 key=int)
  print("| variant | " + " | ".join(f"seed {k}" for k in seeds) + " |")
  print("| --- |" + " --- |" * len(seeds))
  for strategy, e in rows:
    by_seed = e.get("sst2_paired_diff", {}).get("by_seed", {})
    if not by_seed:
      continue
    cells = []
    for k in seeds:
      d = by_seed.get(k) or by_seed.get(str(k))
      cells.append("-" if not d else f"{d['mean'] * 100:+.1f}"
                   + (f" ± {d['se'] * 100:.1f}" if d.get("se") is not None else ""))
    print(f"| `{strategy}` | " + " | ".join(cells) + " |")


def probe_table():
  r = _load("sst2_probe.json")
  if not r:
    return
  runs = r["runs"]
  layers = max(len(e["dev_accuracy_by_layer"]) for e in runs.values())
  print("\nLinear probe of the frozen encoders, dev accuracy by layer (0 = embeddings):\n")
  print("| encoder | " + " | ".join(map(str, range(layers))) + " |")
  print("| --- |" + " --- |" * layers)
  for name, e in runs.items():
    print(f"| `{name}` | " + " | ".join(f"{a:.3f}" for a in e["dev_accuracy_by_layer"]) + " |")


def options_table():
  r = _load("options_speed.json")
  if not r:
    return
  env = _environment(r)
  print(f"{r['config']}, batch {r['batch_size']} × seq {r['seq_len']}, keep {r['keep_tokens']}, "
        f"{env['device']} ({env['cpu_count']} cores); median of {len(r['step_times_s']['full'])} "
        "interleaved steps.\n")
  print("| step | s/step | measured / full | FLOPs / full |")
  print("| --- | --- | --- | --- |")
  for name, p in r["per_step"].items():
    print(f"| `{name}` | {p['median_s']:.3f} | {p['measured_ratio']:.3f} | {p['flops_ratio']:.3f} |")
  print("\n| whole run, against the full model | measured | FLOPs |")
  print("| --- | --- | --- |")
  for name, p in r["run_average"].items():
    print(f"| `{name}` | **{p['measured_ratio']:.3f}** | {p['flops_ratio']:.3f} |")


def step_options_table():
  r = _load("step_options_cpu.json")
  if not r:
    return
  print(f"| row ({r['config']}: batch {r['batch_size']} × {r['seq_len']}, keep {r['keep_tokens']}) "
        "| full step | full / default | drop step | drop / full |")
  print("| --- | --- | --- | --- | --- |")
  for name, p in r["rows"].items():
    changes = ", ".join(f"`{k}={v}`" for k, v in p["changes"].items()) or "default"
    print(f"| {name}: {changes} | {p['full_step_s']:.3f} s | {p['full_over_default']:.3f} "
          f"| {p['drop_step_s']:.3f} s | {p['drop_over_full']:.3f} |")


def other():
  r = _load("loop_overhead.json")
  if r:
    print(f"- Train loop vs bare jitted step ({r['config']}): loop {r['loop_step_s']:.3f} s/step, "
          f"bare {r['bare_drop_step_s']:.3f} s/step: **{(r['loop_over_bare'] - 1) * 100:+.1f}%**.")
  r = _load("data_pipeline.json")
  if r:
    for p in r["pipeline"]:
      print(f"- Input pipeline, one core, seq {p['seq_len']}: **{p['tokens_per_s'] / 1e6:.2f}M "
            f"packed+masked tokens/s** (fill {p['fill']:.2f}).")
    print(f"- Tokenizer training on the 44 MB offline corpus: {r['tokenizer_train_s']:.0f} s "
          f"(vocab {r['vocab_size']}); tokenizing it into ArrayRecord: {r['corpus_build_s']:.0f} s.")
  r = _load("sst2_demo.json")
  if r:
    for v, e in r.items():
      print(f"- `demo:{v}`: pretraining eval loss {e['pretrain_eval_loss']:.3f}, SST-2 dev accuracy "
            f"**{e['sst2_dev_best']['accuracy']:.3f}**.")


if __name__ == "__main__":
  for title, fn in (("Step time", step_table), ("Peer", peer_table),
                    ("Quality", quality_table), ("Options", options_table),
                    ("Kernel options", step_options_table), ("Other", other)):
    print(f"\n### {title}\n")
    fn()
