"""A run's steps compiled for a TPU slice that is not here, and what the compiler says.

The pieces of `python -m tokendrop_jax.compile`: the slice and its devices, checked
before any compile (`setup`); every step kind the config trains, built by the
train main's own `loop.build` on those devices and compiled (`compile_kinds`);
the largest global batch that fits (`search_max_batch`); the advice when a
kind does not fit, and the table.
"""
from __future__ import annotations

import math
from typing import Callable

import flax.linen as nn
import jax
import numpy as np

from tokendrop_jax import config_checks, config_lib, flops, importance, synthetic
from tokendrop_jax.training import aot, loop, step_plan, tpu_slice

def setup(config, topology: str):
  """(slice, devices, the built run) for a validated config; ValueError naming the field
  before any compile (loop.build checks the mesh and batches against the slice)."""
  if config is None:
    raise ValueError("--config is required (configs/x.py[:variant])")
  the_slice = tpu_slice.parse(topology or "")
  config_checks.validate(config)
  config_checks.check_platform(config, "tpu")
  devices = tpu_slice.devices(the_slice)
  run = build(config, devices)
  state_bytes = state_bytes_per_device(run.layout)
  if state_bytes > the_slice.hbm_bytes:
    raise ValueError(
        f"the train state alone is {state_bytes / 2**30:.1f} GiB per chip, more than a "
        f"{the_slice.generation} chip's {the_slice.hbm_bytes / 2**30:.0f} GiB: shard it with "
        f"--config.mesh.fsdp=N (now {config.mesh.fsdp}) or use more chips")
  return the_slice, devices, run


def build(config, devices):
  """The train main's `loop.build` on `devices` (no compile yet)."""
  vocab = config_lib.model_config(config).vocab_size
  counts = (np.ones((vocab,), np.int64)  # their values do not change the program
            if importance.get(config.token_drop.strategy).needs_counts else None)
  return loop.build(config, synthetic.SPECIAL_IDS, counts, devices=devices)


def attention_kernel(config) -> str:
  """The attention kernel `model.attention` gives on a TPU ('splash' or 'einsum')."""
  return config_lib.model_config(config, platform="tpu").attention


def kind_names(config) -> list[str]:
  return [k.name for k in step_plan.kinds(config)] + ["eval"]


def state_bytes_per_device(layout) -> int:
  """Per-device bytes of the train state from its shardings: known before any compile."""
  total = 0
  for leaf in jax.tree.leaves(layout.abstract):
    shape = leaf.sharding.shard_shape(leaf.shape)
    total += int(np.prod(shape)) * leaf.dtype.itemsize
  return total


def compile_kinds(config, the_slice, devices, names: list[str], run=None) -> dict:
  """{kind name: report} for `names`, compiled in this process (`run`: `build`'s, if
  `setup` made it already)."""
  cfg = config_lib.model_config(config)
  run = run or build(config, devices)
  d = config.data
  batch = aot.abstract_batch(run.layout.mesh, d.global_batch_size, d.seq_len,
                             d.max_predictions_per_seq)
  kinds = {k.name: k for k in run.train_steps}
  steps = {k.name: n for k, n in step_plan.kind_counts(config).items()}
  state_bytes = state_bytes_per_device(run.layout)
  out = {}
  with jax.set_mesh(run.layout.mesh), nn.logical_axis_rules(run.layout.rules):
    for name in names:
      if name == "eval":
        fn, args, model_flops = run.eval_step, (run.layout.abstract.params, batch), None
      else:
        kind = kinds[name]
        fn, args = run.train_steps[kind], (run.layout.abstract, batch)
        model_flops = flops.train_step_flops(
            cfg, d.global_batch_size, d.seq_len, d.max_predictions_per_seq, kind.keep_tokens,
            config.token_drop.layerwise, kind.consistency,
            config.token_drop.consistency_form == "paper")
      report = aot.compile_step(fn, args, the_slice.hbm_bytes)
      report["state_bytes"] = state_bytes
      if model_flops is not None:
        report["model_flops_per_device"] = model_flops / the_slice.total_chips
        report["steps_in_run"] = steps.get(name, 0)
      out[name] = report
  return out


def batch_step(config, chips: int) -> int:
  """The smallest change of data.global_batch_size that keeps every batch check true."""
  step = chips * config.optim.grad_accum_steps  # pure data parallel: rows split over chips
  return math.lcm(step, config.data.num_shards)


def _temporaries(report: dict) -> int | None:
  """The compiler's temporaries: what it reports when the program fits, what it says it
  needed when it refused (the same quantity in its out-of-memory message)."""
  return report.get("temp_bytes", report.get("needed_bytes"))


def search_max_batch(compile_at: Callable[[int], dict], batch: int, step: int,
                     resolution: float = 1 / 8,
                     confirm: Callable[[int], dict] | None = None) -> dict:
  """The largest global batch (a multiple of `step`) for which `compile_at` fits, to within
  `resolution` of itself: bracket it by doubling or halving from `batch`, then split the
  bracket where a line through the temporaries of its two ends meets the chip's limit,
  kept within the middle half of the bracket (the TPU compiler works harder as memory
  gets tight, so the line is only a guide).

  `confirm`, if given, compiles the answer in full when `compile_at` only probed it (a
  probe stops the compiler once its buffers fit the chip; a later pass can still refuse):
  a refusal there moves the search below it.

  Returns {"max_batch": the largest that fit (0: not even `step`), "refused_at": the
  smallest that did not, "tried": `tried_record` of every compile}.
  """
  tried: dict[int, dict] = {}

  def fits(b: int) -> bool:
    if b not in tried:
      tried[b] = compile_at(b)
    return tried[b]["fits"]

  def down_from(hi: int) -> tuple[int, int]:
    """Halve from a refused `hi` until a batch fits: (that batch or 0, the smallest refused)."""
    while hi > step:
      b = max(step, hi // 2 // step * step)
      if fits(b):
        return b, hi
      hi = b
    return 0, hi

  b = max(step, batch // step * step)
  if fits(b):
    lo = b
    while fits(2 * lo):
      lo *= 2
    hi = 2 * lo
  else:
    lo, hi = down_from(b)
  while True:
    limit = next((r["available_bytes"] for r in tried.values() if "available_bytes" in r),
                 None)
    while lo and hi - lo > max(step, int(lo * resolution)):
      t_lo, t_hi = _temporaries(tried[lo]), _temporaries(tried[hi])
      mid = (lo + hi) // 2
      if limit and t_lo is not None and t_hi is not None and t_hi > t_lo:
        mid = lo + int((limit - t_lo) / (t_hi - t_lo) * (hi - lo))
      # Near the limit the compiler squeezes its temporaries just under it, so the line can
      # land just above `lo` try after try: each try stays in the middle half of the bracket,
      # which shrinks it by a quarter at least.
      quarter = (hi - lo) // 4
      mid = min(max(mid, lo + quarter), hi - quarter)
      mid = min(max(mid // step * step, lo + step), hi - step)
      if fits(mid):
        lo = mid
      else:
        hi = mid
    if not (lo and confirm and tried[lo].get("probe")):
      break
    tried[lo] = confirm(lo)
    if tried[lo]["fits"]:
      break
    hi = lo  # refused in full: the largest probe below it, or halve down again
    lo = max((k for k, r in tried.items() if r["fits"] and k < hi), default=0)
    if not lo:
      lo, hi = down_from(hi)
  return {"max_batch": lo, "refused_at": hi, "tried": tried_record(tried)}


def tried_record(tried: dict[int, dict]) -> dict[str, dict]:
  """What a batch search keeps of each compile: {batch: {"fits", "temp_bytes"[, "probe"]
  [, "memory_space" the compiler ran out of]}}."""
  return {str(k): {"fits": r["fits"], "temp_bytes": _temporaries(r),
                   **({"probe": True} if r.get("probe") else {}),
                   **({"memory_space": r["memory_space"]} if "memory_space" in r else {})}
          for k, r in sorted(tried.items())}


def crash_hint(config, kind: str) -> str:
  """What avoids a compiler crash we know of (libtpu 0.0.42.1, docs/pods.md): a drop step
  with model.remat=full and the einsum attention's dropout dies with SIGSEGV."""
  if (kind.startswith("drop") and config.model.remat == "full"
      and config.model.attention_dropout_rate > 0 and attention_kernel(config) == "einsum"):
    return ("libtpu 0.0.42.1 crashes compiling a drop step with model.remat=full and the "
            "einsum attention's dropout; it compiles with --config.model.remat=dots, or with "
            "--config.model.attention_dropout_rate=0 (the splash kernel)")
  return ""


def advice(config, the_slice, report: dict) -> str:
  """By how much a kind does not fit, and the knobs that would help."""
  accum = f"--config.optim.grad_accum_steps={2 * config.optim.grad_accum_steps}"
  chips = f"more chips (now {config.data.global_batch_size // the_slice.total_chips} rows per chip)"
  space = report.get("memory_space", "hbm")
  if space != "hbm":  # one of the compiler's kernels, not the chip's HBM
    return (f"does not compile: the TPU compiler ran out of {space.upper()}, a core's on-chip "
            "scratch memory, in one of its kernels; that is a limit of how it compiles this "
            "program, not of the chip's HBM. Fewer rows per chip may compile (--max_batch finds "
            f"out): try {accum}; {chips}; or another model.remat policy")
  need = report.get("needed_bytes") or report.get("peak_bytes")
  have = report.get("available_bytes") or the_slice.hbm_bytes
  over = f" by {(need - have) / 2**30:.2f} GiB ({need / 2**30:.2f} needed, " \
         f"{have / 2**30:.2f} available)" if need and have else ""
  knobs = []
  if config.model.remat in ("none", False):
    knobs.append("--config.model.remat=full (recompute each layer's activations)")
  knobs.append(f"{accum} (half the rows per compiled step, same global batch)")
  if int(config.mesh.fsdp) == 1:  # already sharded: saying so again would not help
    chips += ", or --config.mesh.fsdp to shard parameters and optimizer state"
  knobs.append(chips)
  return f"does not fit{over}; try " + "; ".join(knobs)


def table(result: dict) -> str:
  gib = lambda b: f"{b / 2**30:6.2f}"  # noqa: E731
  lines = [f"{'kind':<14}{'steps':>9} {'peak GiB':>9}{'HBM':>6}  {'temp GiB':>8} "
           f"{'all-reduce MB':>13} {'other coll. MB':>14} {'TFLOP/chip':>10} "
           f"{'compile s':>9} {'host GiB':>8}"]
  for name, r in result["kinds"].items():
    host = f"{r['host_peak_gib']:8.1f}" if "host_peak_gib" in r else f"{'':8}"
    steps = f"{r['steps_in_run']:9d}" if "steps_in_run" in r else f"{'':9}"
    if r.get("probe"):
      lines.append(f"{name:<14}{steps} {'fits (probed up to buffer assignment)':<60}"
                   f"{r['compile_s']:9.0f} {host}")
      continue
    if "peak_bytes" not in r:
      space = r.get("memory_space", "hbm")
      why = "does not fit" if space == "hbm" else f"out of {space.upper()}"
      lines.append(f"{name:<14}{steps} {'refused by the compiler: ' + why:<60}"
                   f"{r['compile_s']:9.0f} {host}")
      continue
    coll = r["collective_bytes"]
    other = r["collective_bytes_total"] - coll.get("all-reduce", 0)
    tflop = r.get("model_flops_per_device", r["compiler_flops_per_device"]) / 1e12
    lines.append(f"{name:<14}{steps} {gib(r['peak_bytes']):>9}{r['hbm_fraction']:6.0%}  "
                 f"{gib(r['temp_bytes']):>8} {coll.get('all-reduce', 0) / 1e6:13.1f} "
                 f"{other / 1e6:14.1f} {tflop:10.2f} {r['compile_s']:9.0f} {host}")
  return "\n".join(lines)


