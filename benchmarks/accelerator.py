"""The step on an accelerator: full vs token-drop, each attention kernel and PRNG.

  python benchmarks/accelerator.py --output=OUTDIR/accelerator.json [--smoke]
  (benchmarks/accelerator.sh OUTDIR wraps it)

One case = one config variant (sequence length, model.attention, train.prng_impl);
for each, the full and the token-drop train step of `bert_base` in bfloat16 are
compiled (`aot.compile_step`) and timed alternately on one device
(`tokendrop_jax.benchmark`), and the JSON gets step times, tokens/s, MFU
against the device's bf16 peak, the compiled memory of each step (XLA's own
analysis) and the device's peak memory so far. The JSON is rewritten after every case, so a run cut short by
its time limit keeps what it measured; a case that fails (a kernel missing on
the platform) is recorded with its error and the others go on.

Attention dropout: the fused kernels have none, so every case runs with
model.attention_dropout_rate=0 except `recipe` (einsum, 0.1: BERT's recipe),
which says what the recipe costs on top. Hidden dropout is BERT's 0.1 except in
`no_dropout`, which says what drawing its random bits costs. The first H200 run
(benchmarks/results/accelerator_h200.json) found the step at 13% MFU and token
dropping saving 11% of it for 24% of its FLOPs: these cases come first.

--smoke: the tiny config on whatever device there is, 2 timed steps; the test
suite runs it on the CPU.
"""
from __future__ import annotations

import concurrent.futures
import os
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from accelerator_cases import CASES, SMOKE_CASES, case_config  # noqa: E402

_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/accelerator.json", "JSON path.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny sizes, 2 steps: checks the script (CPU).")
_CASES = flags.DEFINE_list("cases", [], "Only these case names (default: all).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per step kind and case.")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps after compiling.")
_BUDGET = flags.DEFINE_float("budget_s", 270.0, "Skip the cases left once this much time "
                             "has gone (compiles included).")

def peak_bytes_in_use():
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def run_case(config, steps: int, warmup: int) -> dict:
  import jax

  from tokendrop_jax import benchmark, config_checks, flops
  from tokendrop_jax.training import aot
  config_checks.check_platform(config)
  bench = benchmark.setup(config, "loss_ema")
  data, td = config.data, config.token_drop
  fns, states = bench.contenders(bench.kinds())
  # Both steps compile at once (XLA compiles outside the GIL): on a GPU each took ~33 s.
  with concurrent.futures.ThreadPoolExecutor(len(fns)) as pool:
    futures = {k: pool.submit(aot.compile_step, fn, (states[k], bench.batch))
               for k, fn in fns.items()}
    compiled = {k: f.result() for k, f in futures.items()}
  times, first_s = benchmark.time_steps(fns, states, bench.batch, steps, warmup)
  # The same steps dispatched back to back, as the train loop does: what the timed steps
  # above spend on the host (dispatch, the wait for each result) shows as the difference.
  pipelined = benchmark.medians(benchmark.time_pipelined(
      benchmark.step_thunks(fns, states, bench.batch), steps))
  peak = flops.peak_flops_per_device(jax.devices()[0].device_kind)
  tokens = data.global_batch_size * data.seq_len
  out = {"first_step_s": first_s, "peak_bytes_in_use_so_far": peak_bytes_in_use()}
  for k, step_s in benchmark.medians(times).items():
    step_flops = bench.step_flops(td.keep_tokens if k == "drop" else None)
    out[k] = {"step_s": step_s, "tokens_per_s": tokens / step_s,
              "mfu": flops.mfu(step_flops, step_s, 1, peak), "step_gflops": step_flops / 1e9,
              "compiled": compiled[k], "step_times_s": times[k],
              "pipelined_step_s": pipelined[k],
              "pipelined_mfu": flops.mfu(step_flops, pipelined[k], 1, peak)}
  out["drop_over_full"] = out["drop"]["step_s"] / out["full"]["step_s"]
  out["pipelined_drop_over_full"] = pipelined["drop"] / pipelined["full"]
  out["flops_ratio"] = out["drop"]["step_gflops"] / out["full"]["step_gflops"]
  return out


def main(argv):
  del argv
  from tokendrop_jax import benchmark
  cases = SMOKE_CASES if _SMOKE.value else CASES
  names = _CASES.value or list(cases)
  unknown = sorted(set(names) - set(cases))
  if unknown:
    raise app.UsageError(f"--cases: unknown {unknown}; known: {sorted(cases)}")
  steps, warmup = (2, 1) if _SMOKE.value else (_STEPS.value, _WARMUP.value)
  results = {"smoke": _SMOKE.value, "steps": steps, "warmup": warmup, "cases": {}}
  t0 = time.monotonic()  # the budget's clock
  for name in names:
    seq_len, batch, keep, attention, prng, attn_dropout, dropout = cases[name]
    entry = {"seq_len": seq_len, "batch_size": batch, "keep_tokens": keep,
             "attention": attention, "prng_impl": prng, "attention_dropout_rate": attn_dropout,
             "dropout_rate": dropout}
    if time.monotonic() - t0 > _BUDGET.value:
      entry["skipped"] = f"over --budget_s={_BUDGET.value}"
    else:
      try:
        entry.update(run_case(case_config(_SMOKE.value, *cases[name]), steps, warmup))
      except Exception as e:  # pylint: disable=broad-except
        entry["error"] = f"{type(e).__name__}: {str(e)[:500]}"
    results["cases"][name] = entry
    results["elapsed_s"] = time.monotonic() - t0
    benchmark.write_results(results, _OUTPUT.value)
    line = entry.get("error") or entry.get("skipped") or (
        f"full {entry['full']['step_s'] * 1e3:.1f} ms, drop {entry['drop']['step_s'] * 1e3:.1f} "
        f"ms (x{entry['drop_over_full']:.3f}; FLOPs x{entry['flops_ratio']:.3f}); back to back "
        f"{entry['full']['pipelined_step_s'] * 1e3:.1f} / "
        f"{entry['drop']['pipelined_step_s'] * 1e3:.1f} ms")
    print(f"{name}: {line}", flush=True)
  print(f"done in {results['elapsed_s']:.0f} s")


if __name__ == "__main__":
  app.run(main)
