"""Compile a run's steps for a TPU slice that is not here: does it fit, what does it move.

  python -m tokendrop_jax.compile --config=configs/bert_base.py:loss_ema --topology=v5e-16 \
      [--config.data.global_batch_size=1024 ...] [--output=plan.json]

Needs libtpu (make install ACCEL=tpu) and no TPU: the TPU compiler runs on this
host. The mesh, shardings and step functions are the train main's own
(`loop.build` on the slice's devices), so every step kind the config trains
(full, each drop keep, ScTD, schedule stages) and the eval step are compiled as
the pod would compile them. Per kind and per chip: argument, temporary and peak
bytes against the chip's HBM, collective bytes by kind, FLOPs, compile time and
this host's memory. Each kind compiles in its own process (--isolate), so host
memory stays that of one compile.

Exit status: 0 every kind fits; 5 one does not (the compiler's message, by how
much, and what would help); 2 bad input (an unknown topology, a mesh or batch
that does not divide the slice), before any compile.
"""
from __future__ import annotations

import os

# The host backend only runs the compiler: keep JAX off any local accelerator.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import collections  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from tokendrop_jax import accelerator, cli, flops  # noqa: E402
from tokendrop_jax.training import slice_plan  # noqa: E402

EXIT_DOES_NOT_FIT = 5
_OWN_FLAGS = ("--output", "--kinds", "--isolate", "--noisolate", "--max_batch", "--nomax_batch")
_BATCH_FLAG = "--config.data.global_batch_size"
# libtpu's log lines ("I1206 00:07:08.758180 2666 file.cc:123] ..."), and the two of its
# words (libtpu 0.0.42) that say HBM buffer assignment passed and lowering to LLO began.
_LIBTPU_LOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+\.cc:\d+\] ")
_BUFFERS_PLACED = "memory space and buffer assignment time"
_LOWERING = "Global Core Count"


class CompileDied(Exception):
  """A kind's process ended without a report: the TPU compiler crashed (as it would on a
  TPU VM), or this host ran out of memory. `how`: the signal or exit status."""

  def __init__(self, message: str, how: str):
    super().__init__(message)
    self.how = how


def _host_gib(rusage) -> float:
  return rusage.ru_maxrss * 1024 / 2**30  # Linux reports KiB


def _compile_isolated(argv: list[str], name: str, probe: bool = False) -> dict:
  """One kind in a child process; its report with the child's peak host memory.

  `probe`: stop the child as soon as the TPU compiler has placed the program's buffers in
  the chip's HBM (its log says so, and then lowers the program: most of a fitting compile's
  time). Most HBM refusals come before that point; the lowered program is checked again
  (its code added: a program a few MiB under the limit can be refused then) and a kernel
  can run out of VMEM, so a probe's "fits" is a guide and the caller compiles its answer in
  full. The report then has no sizes and `probe` True."""
  env = dict(os.environ)
  if probe:  # libtpu's own log, at the level that names its compile phases
    env.update(TPU_STDERR_LOG_LEVEL="0", TPU_MIN_LOG_LEVEL="0",
               TPU_VMODULE="deepsea_compiler_base=1")
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "kind.json")
    cmd = [sys.executable, "-m", "tokendrop_jax.compile", *argv, f"--kinds={name}",
           "--noisolate", f"--output={path}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    tail: collections.deque = collections.deque(maxlen=15)
    placed = lowering = False
    for line in proc.stderr:
      if probe and _LIBTPU_LOG.match(line):
        placed = placed or _BUFFERS_PLACED in line
        lowering = placed and _LOWERING in line
        if lowering:
          proc.kill()
          break
      else:
        tail.append(line.rstrip("\n"))
    _, status, rusage = os.wait4(proc.pid, 0)
    proc.stderr.close()
    if lowering:
      return {"fits": True, "probe": True, "compile_s": time.perf_counter() - t0,
              "host_peak_gib": _host_gib(rusage)}
    code = os.waitstatus_to_exitcode(status)
    if not os.path.exists(path):
      how, why = f"exit status {code}", f"exited with status {code}"
      if code < 0:
        how = signal.Signals(-code).name
        why = (f"was killed by {how} (the TPU compiler crashed, as it would on a TPU VM, or "
               "this host ran out of memory)")
      raise CompileDied(
          f"compiling {name} failed: its process {why} after using "
          f"{_host_gib(rusage):.1f} GiB of host memory; repeat it with: "
          f"python -m tokendrop_jax.compile {' '.join(cmd[3:-1])}\n" + "\n".join(tail), how)
    with open(path) as f:
      report = json.load(f)["kinds"][name]
  report["host_peak_gib"] = _host_gib(rusage)
  return report


def _or_exit(fn, hint: str = ""):
  try:
    return cli.run_or_exit(fn)
  except CompileDied as e:
    print(f"error: {e}" + (f"\n{hint}" if hint else ""), file=sys.stderr)
    sys.exit(1)


def _define_flags() -> None:
  """Defined only when run as a main, so that importing this module (tests, a benchmark
  with its own --config/--output) cannot clash on flag names."""
  config_flags.DEFINE_config_file("config", None, "configs/x.py[:variant]")
  flags.DEFINE_string("topology", None, "TPU slice: v4-32, v5e-16 (v5litepod-16), "
                      "v5p-128, v6e-8; 2xv5e-16 for two slices", required=True)
  flags.DEFINE_string("output", None, "JSON report path (default: none, table only)")
  flags.DEFINE_list("kinds", None, "Compile only these (full, drop256, drop256_sctd, eval); "
                    "default: every kind the config trains, and eval")
  flags.DEFINE_bool("isolate", True, "Compile each kind in its own process (bounds host "
                    "memory to one compile)")
  flags.DEFINE_bool(
      "max_batch", False, "Also find, per train kind, the largest data.global_batch_size that "
      "fits (a few compiles per kind, each stopped once the compiler has placed its buffers; "
      "the answer compiled in full)")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  config = f.config
  the_slice, devices, run = cli.run_or_exit(lambda: slice_plan.setup(config, f.topology))
  known = slice_plan.kind_names(config)
  names = f.kinds or known
  unknown = [n for n in names if n not in known]
  if unknown:
    print(f"error: --kinds: {', '.join(unknown)} not among this config's kinds: "
          f"{', '.join(known)}", file=sys.stderr)
    sys.exit(cli.EXIT_BAD_INPUT)
  d = config.data
  own = [a for a in sys.argv[1:] if not a.startswith(_OWN_FLAGS)]
  result = {
      "command": " ".join(["python -m tokendrop_jax.compile", *own]),
      "config": config.get("name", ""), "topology": the_slice.name,
      "generation": the_slice.generation, "chips": the_slice.total_chips,
      "slices": the_slice.num_slices, "hosts": the_slice.hosts,
      "compiler_topology": the_slice.compiler_topology,
      "hbm_bytes_per_chip": the_slice.hbm_bytes,
      "peak_bf16_flops_per_chip": flops.peak_flops_per_device(devices[0].device_kind),
      "global_batch_size": d.global_batch_size, "seq_len": d.seq_len,
      "rows_per_chip": d.global_batch_size / the_slice.total_chips,
      "grad_accum_steps": config.optim.grad_accum_steps,
      "remat": str(config.model.remat), "dtype": config.model.dtype,
      "attention": slice_plan.attention_kernel(config),
      "mesh": {a: int(config.mesh[a]) for a in ("data", "fsdp", "tensor")},
      "versions": accelerator.versions(("jax", "jaxlib", "libtpu")), "kinds": {},
  }
  # --max_batch compiles every batch but the first in a child: the first too, so that this
  # process stays small while the children compile, and a crash is reported, not suffered.
  # Its first compile is a probe as well: the search ends with its answer compiled in full.
  isolate = f.isolate and (len(names) > 1 or f.max_batch)
  died: list[CompileDied] = []  # batch searches stopped by a compile that died
  probe = isolate and f.max_batch
  for i, name in enumerate(names):
    print(f"[{i + 1}/{len(names)}] {name}: compiling for {the_slice.name} "
          f"({the_slice.total_chips} chips, {the_slice.compiler_topology})...", flush=True)
    if isolate:
      report = _or_exit(lambda n=name: _compile_isolated(own, n, probe),
                        slice_plan.crash_hint(config, name))
    else:
      report = cli.run_or_exit(
          lambda n=name: slice_plan.compile_kinds(config, the_slice, devices, [n], run)[n])
      report["host_peak_gib"] = _host_gib(resource.getrusage(resource.RUSAGE_SELF))
    result["kinds"][name] = report
    if report.get("probe"):
      print(f"    its buffers fit a chip's HBM (a probe, stopped after "
            f"{report['compile_s']:.0f} s)", flush=True)
    elif report["fits"]:
      print(f"    peak {report['peak_bytes'] / 2**30:.2f} GiB of "
            f"{the_slice.hbm_bytes / 2**30:.0f} GiB per chip, compiled in "
            f"{report['compile_s']:.0f} s", flush=True)
    else:
      report["advice"] = slice_plan.advice(config, the_slice, report)
      print(f"    the TPU compiler: {report['error'][:300]}\n    {report['advice']}", flush=True)
  if f.max_batch:
    step = slice_plan.batch_step(config, the_slice.total_chips)
    base = [a for a in own if not a.startswith(_BATCH_FLAG)]
    result["max_batch"] = {}
    for name in [n for n in names if n != "eval"]:
      print(f"largest batch for {name} (in steps of {step}):", flush=True)

      seen: dict[int, dict] = {}

      def compile_at(b, probe=True, name=name, seen=seen):
        r = result["kinds"][name] if b == d.global_batch_size else None
        if r is None or (r.get("probe") and not probe):
          try:
            r = cli.run_or_exit(
                lambda: _compile_isolated(base + [f"{_BATCH_FLAG}={b}"], name, probe))
          except CompileDied as e:
            e.batch = b
            raise
          if b == d.global_batch_size:  # the config's own batch, now compiled in full
            result["kinds"][name] = r
            if not r["fits"]:
              r["advice"] = slice_plan.advice(config, the_slice, r)
        how = ("buffers fit (probe)" if r.get("probe") else "fits" if r["fits"] else
               f"refused ({r.get('memory_space', 'hbm').upper()})")
        print(f"    global batch {b}: {how} in {r['compile_s']:.0f} s", flush=True)
        seen[b] = r
        return r

      try:
        found = slice_plan.search_max_batch(compile_at, d.global_batch_size, step,
                                            confirm=lambda b: compile_at(b, probe=False))
      except CompileDied as e:  # a result too: that batch cannot be compiled, so stop here
        e.args = (f"{e}\n{slice_plan.crash_hint(config, name)}".rstrip(),)
        died.append(e)
        result["max_batch"][name] = {"died_at": e.batch, "died": e.how,
                                     "tried": slice_plan.tried_record(seen)}
        print(f"    global batch {e.batch}: the compile died ({e.how}); search stopped",
              flush=True)
        continue
      result["max_batch"][name] = found
      rows = found["max_batch"] / the_slice.total_chips
      print(f"    largest that fits: {found['max_batch']} ({rows:g} rows per chip); "
            f"{found['refused_at']} does not", flush=True)
  if f.output:
    from tokendrop_jax import files  # pylint: disable=import-outside-toplevel
    files.atomic_write(f.output, json.dumps(result, indent=2))
  print(f"\n{result['config']} on {the_slice.name}: global batch {d.global_batch_size} x "
        f"seq {d.seq_len} ({result['rows_per_chip']:g} rows per chip), remat "
        f"{result['remat']}, mesh {result['mesh']}")
  print(slice_plan.table(result))
  if died:
    print(f"\nerror: {died[0]}", file=sys.stderr)
    sys.exit(1)
  refused = [n for n, r in result["kinds"].items() if not r["fits"]]
  if refused:
    print(f"\nerror: {', '.join(refused)} does not fit a {the_slice.generation} chip: "
          f"{result['kinds'][refused[0]]['advice']}", file=sys.stderr)
    sys.exit(EXIT_DOES_NOT_FIT)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
