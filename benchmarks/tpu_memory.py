"""BERT-base/large per-chip memory and collectives on TPU slices, from the TPU compiler.

  .venv/bin/python benchmarks/tpu_memory.py [--cases=base_v5e8,...] [--table]

Each case is one `python -m tokendrop_jax.compile` run (needs libtpu, no TPU):
its JSON goes to benchmarks/results/tpu/<case>.json, and a case whose JSON is
there is not compiled again, so the grid can be filled over several sessions.
--table prints the README's table from whatever JSONs exist. A bert_base step
kind takes minutes to compile on 2 cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

from tokendrop_jax.training import aot

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "tpu")


def _case(config, topology, kinds, *overrides):
  return {"config": f"configs/{config}.py:loss_ema", "topology": topology, "kinds": kinds,
          "overrides": list(overrides)}


# The paper's batch (512 x 512) on the smallest slice of each chip, then larger slices;
# `rows<r>`: r rows per chip (global batch = r x chips), to bracket what fits.
CASES = {
    "base_v4-8": _case("bert_base", "v4-8", "full,drop256"),
    "base_v5e-8": _case("bert_base", "v5e-8", "full,drop256"),
    "base_v5p-8": _case("bert_base", "v5p-8", "full,drop256"),
    "large_v5p-8": _case("bert_large", "v5p-8", "full,drop256"),
    # No attention dropout: model.attention=auto then takes the splash kernel on a TPU.
    "base_v5e-8_splash": _case("bert_base", "v5e-8", "full,drop256",
                               "--config.model.attention_dropout_rate=0.0"),
    "base_v4-32": _case("bert_base", "v4-32", "full,drop256"),
    "base_v5e-16": _case("bert_base", "v5e-16", "full,drop256"),
    "large_v4-8": _case("bert_large", "v4-8", "full,drop256"),
    "large_v5e-8": _case("bert_large", "v5e-8", "full,drop256"),
    # With remat the v4 full step fits 448 rows a chip (large_v4-8_max_full_remat) but not
    # the paper's 128: one kernel runs out of VMEM, which is not monotone in the batch.
    "large_v4-8_remat": _case("bert_large", "v4-8", "full", "--config.model.remat=full"),
    # Does a chip's limit carry to a larger slice of the same chip (pure data parallel: the
    # same rows per chip)? v5e-8's largest full batch (72 rows a chip) and smallest refused
    # one (80), on 16 chips.
    "base_v5e-16_rows72": _case("bert_base", "v5e-16", "full",
                                "--config.data.global_batch_size=1152"),
    "base_v5e-16_rows80": _case("bert_base", "v5e-16", "full",
                                "--config.data.global_batch_size=1280"),
    # The largest global batch per chip (--max_batch: probes, then the answer in full), for
    # both models, full and drop, with and without remat, on the smallest slice of each chip.
    # One kind a case, so that a search cut off loses one kind's compiles, not two.
    **{f"{name}_{chip}_max_{kind}{tag}": _case(f"bert_{name}", chip, steps, "--max_batch", *extra)
       for name in ("base", "large") for chip in ("v5e-8", "v4-8", "v5p-8")
       for tag, extra in (("", ()), ("_remat", ("--config.model.remat=full",)))
       for kind, steps in (("full", "full"), ("drop", "drop256"))},
    # The sharded meshes of benchmarks/sharded_comm.py on 8 TPU chips (its data x fsdp x tensor
    # names; 8x1x1 is base_v5e-8): the TPU compiler's collectives beside XLA:CPU's.
    "base_v5e-8_mesh1x8x1": _case("bert_base", "v5e-8", "full,drop256", "--config.mesh.data=1",
                                  "--config.mesh.fsdp=8"),
    "base_v5e-8_mesh2x2x2": _case("bert_base", "v5e-8", "full,drop256", "--config.mesh.data=2",
                                  "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
                                  "--config.mesh.device_order=list"),
}
COMM_CASES = {"8x1x1": "base_v5e-8", "1x8x1": "base_v5e-8_mesh1x8x1",
              "2x2x2": "base_v5e-8_mesh2x2x2"}

_CASES = flags.DEFINE_list("cases", list(CASES), "Which cases to compile (in this order).")
_TABLE = flags.DEFINE_bool("table", False, "Only print the table of the existing JSONs.")


def run_case(name: str) -> None:
  path = os.path.join(RESULTS, f"{name}.json")
  if os.path.exists(path):
    print(f"{name}: have {os.path.relpath(path, ROOT)}", flush=True)
    return
  c = CASES[name]
  cmd = [sys.executable, "-m", "tokendrop_jax.compile", f"--config={c['config']}",
         f"--topology={c['topology']}", f"--kinds={c['kinds']}", *c["overrides"],
         f"--output={path}"]
  print(f"{name}: {' '.join(cmd[1:])}", flush=True)
  code = subprocess.call(cmd, cwd=ROOT)
  if code not in (0, 5):  # 5: a kind does not fit, which is a result too
    print(f"{name}: exit {code}", flush=True)


def _results():
  """(case name, its JSON) of every case that has one, in CASES order."""
  for name in CASES:
    path = os.path.join(RESULTS, f"{name}.json")
    if os.path.exists(path):
      with open(path) as f:
        yield name, json.load(f)


def _refused(kind: dict) -> str:
  """The cell of a step kind the compiler refused: what it needed of the chip's HBM, or
  which on-chip memory one of its kernels ran out of (read from its message, so that
  JSONs from before the `memory_space` field say it too)."""
  need, space = kind.get("needed_bytes"), aot.memory_space(kind.get("error", ""))
  if need:
    return f"does not fit: {need / 2**30:.1f} needed of {kind['available_bytes'] / 2**30:.2f}"
  if space == "hbm":
    return "does not fit"
  return f"does not compile: a kernel out of {space.upper()}"


def table() -> str:
  rows = ["| config | slice | global batch (rows/chip) | remat | attention | step "
          "| peak GiB/chip (of HBM) | all-reduce MB | other collectives MB | compile s | host GiB |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for name, r in _results():
    if "max_batch" in r or name in COMM_CASES.values() and name != "base_v5e-8":
      continue  # --max_batch and sharded-mesh cases: their own tables
    hbm = r["hbm_bytes_per_chip"] / 2**30
    # (JSONs from before the field: splash exactly when attention dropout was turned off)
    attention = r.get("attention") or ("splash" if any(
        "attention_dropout_rate=0" in o for o in CASES[name]["overrides"]) else "einsum")
    attention += " (no attention dropout)" if attention == "splash" else ""
    for kind, k in r["kinds"].items():
      if "peak_bytes" in k:
        peak = f"{k['peak_bytes'] / 2**30:.1f} ({k['peak_bytes'] / r['hbm_bytes_per_chip']:.0%} of {hbm:.0f})"
        coll = k["collective_bytes"]
        ar = f"{coll.get('all-reduce', 0) / 1e6:.0f}"
        other = f"{(k['collective_bytes_total'] - coll.get('all-reduce', 0)) / 1e6:.0f}"
      else:
        peak, ar, other = _refused(k), "-", "-"
      rows.append(f"| {r['config']} | {r['topology']} | {r['global_batch_size']} "
                  f"({r['rows_per_chip']:g}) | {r['remat']} | {attention} | {kind} | {peak} "
                  f"| {ar} | {other} "
                  f"| {k['compile_s']:.0f} | {k.get('host_peak_gib', 0):.1f} |")
  return "\n".join(rows)


def _tries(tried: dict) -> str:
  """How many batches a search compiled, and how many of them only up to buffer assignment."""
  probes = sum(t.get("probe", False) for t in tried.values())
  return f"{len(tried)} ({probes} probed)" if probes else str(len(tried))


def max_batch_table() -> str:
  """The largest global batch of each --max_batch case."""
  rows = ["| config | slice | remat | step | largest global batch that fits (rows/chip) "
          "| its temporaries GiB/chip | smallest refused | batches tried |",
          "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for name, r in _results():
    for kind, m in r.get("max_batch", {}).items():
      if "died_at" in m:  # the compiler crashed: in full, on a batch whose buffers fit, or in a probe
        placed = m["tried"].get(str(m["died_at"]), {}).get("fits")
        rows.append(f"| {r['config']} | {r['topology']} | {r['remat']} | {kind} "
                    f"| the TPU compiler crashed ({m['died']}) compiling {m['died_at']} "
                    f"({m['died_at'] / r['chips']:g}){', whose buffers fit' if placed else ''} "
                    "| - | - "
                    f"| {_tries(m['tried'])} |")
        continue
      rows.append(f"| {r['config']} | {r['topology']} | {r['remat']} | {kind} "
                  f"| {m['max_batch']} ({m['max_batch'] / r['chips']:g}) "
                  f"| {m['tried'][str(m['max_batch'])]['temp_bytes'] / 2**30:.1f} | {m['refused_at']} "
                  f"| {_tries(m['tried'])} |")
  return "\n".join(rows) if len(rows) > 2 else ""


def rows_table() -> str:
  """Rows per chip that fit, full step / drop step, by model and remat (the --max_batch
  cases): a chip's limit, the same on every slice of that chip with pure data parallelism."""
  results = dict(_results())
  chips = ("v5e-8", "v4-8", "v5p-8")
  hbm = {}
  for r in results.values():
    hbm.setdefault(r["topology"], r["hbm_bytes_per_chip"])

  def cell(name):
    r = results.get(name)
    if r is None:
      return "not run"
    m = next(iter(r["max_batch"].values()))
    if "died_at" in m:
      return f"compiler crashes at {m['died_at'] / r['chips']:g}"
    return f"{m['max_batch'] / r['chips']:g}"

  head = " | ".join(f"{c.split('-')[0]} chip ({hbm[c] / 2**30:.0f} GiB)" if c in hbm else c
                    for c in chips)
  rows = [f"| | {head} |", "| --- | --- | --- | --- |"]
  for model in ("base", "large"):
    for tag, label in (("", ""), ("_remat", ", `model.remat=full`")):
      cells = [f"{cell(f'{model}_{c}_max_full{tag}')} / {cell(f'{model}_{c}_max_drop{tag}')}"
               for c in chips]
      rows.append(f"| bert_{model}{label} | {' | '.join(cells)} |")
  return "\n".join(rows)


def _mb(n: int) -> str:
  return f"{n / 1e6:,.0f}" if n >= 5e5 else "<1"


def comm_table() -> str:
  """Collective bytes per chip and step by mesh: the TPU compiler's (v5e-8) beside XLA:CPU's
  (benchmarks/results/sharded_comm.json, 8 CPU devices, the same programs)."""
  with open(os.path.join(ROOT, "benchmarks", "results", "sharded_comm.json")) as f:
    cpu = {(r["config"], r["mesh"], r["kind"]): r for r in json.load(f)["records"]}
  rows = ["| config | mesh data×fsdp×tensor | step | TPU collectives MB/chip (by kind) "
          "| XLA:CPU MB/device | TPU peak GiB/chip |", "| --- | --- | --- | --- | --- | --- |"]
  results = dict(_results())
  for mesh, name in COMM_CASES.items():
    r = results.get(name)
    for kind, k in (r["kinds"].items() if r else ()):
      if "collective_bytes" not in k:  # refused: how much it needed is the finding
        rows.append(f"| {r['config']} | {mesh.replace('x', '×')} | {kind} | - | - "
                    f"| {_refused(k)} |")
        continue
      by_kind = ", ".join(f"{c} {_mb(b)}" for c, b in k["collective_bytes"].items() if b)
      c = cpu.get((r["config"], mesh, kind))
      cpu_mb = f"{c['total_bytes'] / 1e6:,.0f}" if c else "-"
      rows.append(f"| {r['config']} | {mesh.replace('x', '×')} | {kind} "
                  f"| {k['collective_bytes_total'] / 1e6:,.0f} ({by_kind}) | {cpu_mb} "
                  f"| {k['peak_bytes'] / 2**30:.1f} |")
  return "\n".join(rows) if len(rows) > 2 else ""


def main(argv):
  del argv
  if not _TABLE.value:
    os.makedirs(RESULTS, exist_ok=True)
    for name in _CASES.value:
      run_case(name)
  # docs/pods.md's tables, in its order, a blank line between them
  print("\n\n".join(t for t in (table(), max_batch_table(), rows_table(), comm_table()) if t))


if __name__ == "__main__":
  app.run(main)
