"""Where the train step's time goes: a jax.profiler trace, summed by HLO op and by layer part.

  python benchmarks/profile_step.py --config=configs/bench_cpu.py [--kind=full|drop] \
      [--steps=3] [--output=benchmarks/results/profile_bench_cpu.json] [--config.a.b=value ...]

Runs the jitted train step of `tokendrop_jax.benchmark` (the one the step
table times) under `jax.profiler`, reads the trace back with
`jax.profiler.ProfileData` (no TensorBoard needed), and sums the time of each
executed HLO instruction over the timed steps. Each instruction is labelled
from the compiled HLO: its opcode and what it fuses (dot, reduce, rng, gather,
...), and the part of the model its `op_name` metadata names (attention, ffn,
mlm_head, embeddings, layer_norm, optimizer, dropout's random bits, ...). The JSON
has the top instructions and both groupings as shares of the profiled time.

The profiler adds a little overhead per op; the shares are what to read. On a
CPU the op events are the XLA runtime's thunks; on a GPU they are the kernels.
"""
from __future__ import annotations

import collections
import glob
import os
import sys
import tempfile

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tokendrop_jax.training.kernels import hlo_labels, part_of, pass_of  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", os.path.join(ROOT, "configs/bench_cpu.py"),
    "configs/x.py[:variant]; fields can be overridden, e.g. --config.model.dtype=bfloat16")
_KIND = flags.DEFINE_enum("kind", "full", ["full", "drop"], "Which step to profile.")
_STEPS = flags.DEFINE_integer("steps", 3, "Profiled steps (after a warm-up step).")
_TOP = flags.DEFINE_integer("top", 40, "Instructions listed in the JSON.")
_OUTPUT = flags.DEFINE_string("output", "", "JSON path (default: print only).")

def _hlo_op(event) -> str:
  """The HLO instruction an event ran: its `hlo_op` stat where the runtime records one
  (a GPU kernel's own name, e.g. cuBLAS's, is not the instruction's), else its name."""
  for key, value in event.stats:
    if key == "hlo_op" and value:
      return str(value)
  return event.name


def op_times(xplane_path: str) -> collections.Counter:
  """Summed duration (s) per event name on the device or the CPU's XLA threads."""
  import jax
  data = jax.profiler.ProfileData.from_file(xplane_path)
  gpu = [p for p in data.planes if p.name.startswith("/device:")]
  planes = gpu or [p for p in data.planes if p.name == "/host:CPU"]
  total = collections.Counter()
  for plane in planes:
    for line in plane.lines:
      if not gpu and not line.name.startswith("tf_XLA"):
        continue  # the CPU's Python and bookkeeping threads
      for ev in line.events:
        if ev.duration_ns > 0 and not ev.name.startswith(("ThreadpoolListener", "end: ",
                                                          "ThunkExecutor", "SlinkyThreadPool")):
          total[_hlo_op(ev)] += ev.duration_ns / 1e9
  return total


def profile(config, kind: str, steps: int) -> dict:
  import jax

  from tokendrop_jax import benchmark
  bench = benchmark.setup(config, "loss_ema")
  fns, states = bench.contenders({kind: bench.kinds()[kind]})
  labels = hlo_labels(fns[kind].lower(states[kind], bench.batch).compile().as_text())
  thunks = benchmark.step_thunks(fns, states, bench.batch)
  benchmark.timed(thunks[kind])  # compile + a warm-up step
  trace_dir = tempfile.mkdtemp(prefix="profile_step-")

  def traced():
    jax.profiler.start_trace(trace_dir)
    benchmark.time_interleaved(thunks, steps)
    jax.profiler.stop_trace()

  wall = benchmark.timed(traced).wall_s / steps
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
  times = op_times(path)
  # An event is an instruction's name, possibly with a suffix the runtime adds.
  def label(ev):
    return labels.get(ev) or labels.get(ev.split(":")[0]) or {"op_name": "", "opcode": "?",
                                                               "kind": "unmatched", "shape": ""}
  total = sum(times.values())
  by_kind, by_part, by_pass = collections.Counter(), collections.Counter(), collections.Counter()
  copies = collections.Counter()  # layout copies and transposes, by the shape they write
  for ev, t in times.items():
    lab = label(ev)
    by_kind[lab["kind"]] += t
    by_part["random bits" if lab["kind"] == "random bits" else part_of(lab["op_name"])] += t
    by_pass[pass_of(lab["op_name"])] += t
    if lab["kind"] == "copy/transpose":
      copies[lab["shape"]] += t
  share = lambda c: {k: round(v / total, 4) for k, v in c.most_common()}  # noqa: E731
  top = [{"instruction": ev, "s_per_step": t / steps, "share": t / total, **label(ev)}
         for ev, t in times.most_common(_TOP.value)]
  return {"config": config.name, "kind": kind, "steps": steps,
          "batch_size": config.data.global_batch_size, "seq_len": config.data.seq_len,
          "dtype": config.model.dtype,
          "wall_s_per_step_profiled": wall, "op_s_per_step": total / steps,
          "by_pass": share(by_pass), "by_kind": share(by_kind), "by_part": share(by_part),
          "copies_by_shape": dict(list(share(copies).items())[:10]), "top": top,
          "instructions_matched": sum(1 for ev in times if ev in labels or ev.split(":")[0] in labels),
          "instructions_seen": len(times)}


def main(argv):
  del argv
  from tokendrop_jax import benchmark
  config = _CONFIG.value
  result = profile(config, _KIND.value, _STEPS.value)
  print(f"{result['config']} {result['kind']} step: {result['wall_s_per_step_profiled']:.3f} s "
        f"profiled, ops {result['op_s_per_step']:.3f} s "
        f"({result['instructions_matched']}/{result['instructions_seen']} instructions labelled)")
  for name in ("by_pass", "by_part", "by_kind"):
    print(name + ": " + ", ".join(f"{k} {v:.1%}" for k, v in result[name].items()))
  for row in result["top"][:10]:
    print(f"  {row['share']:6.1%} {row['instruction']:<28} {row['kind']:<14} {row['shape']:<22} "
          f"{row['op_name'][-60:]}")
  if _OUTPUT.value:
    benchmark.write_results(result, _OUTPUT.value)


if __name__ == "__main__":
  app.run(main)
