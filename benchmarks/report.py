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


def step_table():
  rows = []
  for name in ("step_bench_cpu.json", "step_demo.json"):
    r = _load(name)
    if r:
      rows.append(r)
  sweep = _load("speed_sweep.json") or []
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


def scaling_table():
  r = _load("scaling_on_paper.json")
  if not r:
    return
  print(f"| config | TFLOP/step full → drop | expected step-time ratio | system (at an assumed "
        f"{r['assumed_mfu']:.0%} MFU) | tokens/s full → drop | 1M steps, days |")
  print("| --- | --- | --- | --- | --- | --- |")
  for name, e in r["configs"].items():
    for system, s in e["systems"].items():
      print(f"| {name} | {e['full_step_tflops']:.0f} → {e['drop_step_tflops']:.0f} "
            f"| {e['expected_step_time_ratio']:.3f} | {system} "
            f"| {s['full_tokens_per_s']:,.0f} → {s['drop_tokens_per_s']:,.0f} "
            f"| {s['days_for_1M_steps_full']:.1f} → {s['days_for_1M_steps_drop']:.1f} |")
  print()
  print("| config | per-device memory, 8-way data parallel (XLA:CPU AOT) | full step | drop step |")
  print("| --- | --- | --- | --- |")
  for name, e in r["configs"].items():
    for key, label in (("memory_per_device_8way_data_parallel", "no remat"),
                       ("memory_per_device_8way_data_parallel_remat", "`model.remat=True`")):
      m = e.get(key)
      if m:
        print(f"| {name} | {label} | {m['full']['peak_estimate_bytes'] / 2**30:.1f} GiB "
              f"| {m['drop']['peak_estimate_bytes'] / 2**30:.1f} GiB |")


def quality_table():
  q = _load("quality_offline_en.json")
  if not q:
    return
  runs = q["runs"]
  base = runs.get("none")
  print(f"Budget for equal time: {q['equal_time_budget_s']:.0f} s measured, "
        f"{q['equal_quiet_time_budget_s']:.0f} s quiet clock (the fastest run's total).\n")
  print("| variant | training time, measured (quiet clock) | vs `none` | val loss at "
        f"{q['num_steps']} steps | at equal measured time | at equal quiet time "
        "| SST-2 dev acc, mean ± sd (seeds) | vs `none`, paired ± s.e. |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for name, r in runs.items():
    ratio = (f"{r['total_train_time_s'] / base['total_train_time_s']:.2f}× "
             f"({r['total_quiet_clock_s'] / base['total_quiet_clock_s']:.2f}×)") if base else "-"
    acc, diff = "not run", "-"
    if "sst2_dev_accuracy" in r:
      n = len(r.get("sst2_seeds", [0]))
      sd = f" ± {r['sst2_dev_accuracy_std']:.3f}" if r.get("sst2_dev_accuracy_std") else ""
      acc = f"{r['sst2_dev_accuracy']:.3f}{sd} ({n})"
    if r.get("sst2_paired_diff") is not None and r is not base:
      sem = f" ± {r['sst2_paired_diff_sem'] * 100:.1f}" if r.get("sst2_paired_diff_sem") else ""
      diff = f"{r['sst2_paired_diff'] * 100:+.1f}{sem} pts"
    print(f"| `{name}` | {r['total_train_time_s']:.0f} s ({r['total_quiet_clock_s']:.0f} s) | {ratio} "
          f"| {r['equal_steps_loss']:.3f} | {r['equal_time_loss']:.3f} "
          f"| {r['equal_quiet_time_loss']:.3f} | {acc} | {diff} |")


def options_table():
  r = _load("options_speed.json")
  if not r:
    return
  print(f"{r['config']}, batch {r['batch_size']} × seq {r['seq_len']}, keep {r['keep_tokens']}, "
        f"{r['device']} ({r['cpu_count']} cores); median of {len(r['step_times_s']['full'])} "
        "interleaved steps.\n")
  print("| step | s/step | measured / full | FLOPs / full |")
  print("| --- | --- | --- | --- |")
  for name, p in r["per_step"].items():
    print(f"| `{name}` | {p['median_s']:.3f} | {p['measured_ratio']:.3f} | {p['flops_ratio']:.3f} |")
  print("\n| whole run, against the full model | measured | FLOPs |")
  print("| --- | --- | --- |")
  for name, p in r["run_average"].items():
    print(f"| `{name}` | **{p['measured_ratio']:.3f}** | {p['flops_ratio']:.3f} |")


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
  for title, fn in (("Step time", step_table), ("Peer", peer_table), ("Scaling", scaling_table),
                    ("Quality", quality_table), ("Options", options_table), ("Other", other)):
    print(f"\n### {title}\n")
    fn()
