"""Compile time of the train step with and without `model.scan_layers` (AOT, nothing runs).

  .venv/bin/python benchmarks/compile_time.py [--configs=bert_base,bert_large] \
      [--output=benchmarks/results/compile_time.json] [--smoke]

Why: unrolled, the program holds one copy of every layer, so XLA compiles 24
layers for bert_large; scanned, each block of identical layers is one loop
body. For each config and layout the full step and the token-drop step are
lowered with abstract arguments (one device, global batch 8: compile time
does not depend on the batch) and compiled; the CPU time of this process
during `lower(...).compile()` (XLA:CPU compiles on the calling thread, and CPU
time does not count the time other programs take the cores), the wall time,
and the compiled program's size are recorded. --smoke: config tiny.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

_CONFIGS = flags.DEFINE_list("configs", ["bert_base", "bert_large"], "configs/<name>.py")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/compile_time.json", "JSON path.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Config tiny only (the test).")
_BATCH = 8


def compile_case(name: str, scan: bool) -> dict:
  from tokendrop_jax import benchmark, config_lib
  config = config_lib.load_file(os.path.join(ROOT, "configs", f"{name}.py"), "loss_ema")
  config.model.update(scan_layers=scan, attention="einsum")
  config.data.update(global_batch_size=_BATCH, num_shards=1)
  bench = benchmark.setup(config, "loss_ema")
  out = {}
  for kind, settings in bench.kinds().items():
    # CPU time is the figure (the wall time is kept too): see the module docstring.
    c = benchmark.timed(lambda s=settings: bench.jit_step(s).lower(bench.abstract,
                                                                   bench.batch).compile())
    out[kind] = {"compile_s": c.wall_s, "compile_cpu_s": c.cpu_s,
                 "hlo_chars": len(c.value.as_text() or "")}
  return out


def main(argv):
  del argv
  from tokendrop_jax import benchmark
  names = ["tiny"] if _SMOKE.value else _CONFIGS.value
  results = {"global_batch": _BATCH, "configs": {}}
  for name in names:
    results["configs"][name] = {}
    for scan in (False, True):
      layout = "scanned" if scan else "unrolled"
      results["configs"][name][layout] = r = compile_case(name, scan)
      print(f"{name} {layout}: full {r['full']['compile_cpu_s']:.1f} CPU s, "
            f"drop {r['drop']['compile_cpu_s']:.1f} CPU s", flush=True)
    u, s = results["configs"][name]["unrolled"], results["configs"][name]["scanned"]
    results["configs"][name]["unrolled_over_scanned"] = {
        k: u[k]["compile_cpu_s"] / s[k]["compile_cpu_s"] for k in ("full", "drop")}
  benchmark.write_results(results, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
