"""Memory of each `model.remat` policy, read from the compiled train steps (AOT, nothing runs).

  nice -n 10 .venv/bin/python benchmarks/remat_memory.py \
      [--config=bert_base] [--policies=none,full,dots,dots_no_batch] [--global_batch=N] \
      [--scheduler=default|memory] [--output=benchmarks/results/remat_memory.json] [--merge] \
      [--smoke]

Why: a remat policy trades recomputation in the backward pass for activation
memory, and how much it saves depends on the model and the compiler. This reads
what XLA plans for each policy without allocating a byte, so it runs for
BERT-base on a laptop.

How: for each policy, `loop.build` of the config (variant loss_ema) with
`model.remat=<policy>`; its full step and its drop step (keep_tokens) are lowered
with abstract arguments for the config's mesh on 8 fake CPU devices (data
parallel 8 ways: global batch / 8 rows per device), under the logical-axis rules
as the training loop runs them, and compiled. From `memory_analysis()` per
device: temp bytes (activations kept for the backward pass and all other
scratch: what the policy changes), arguments (train state + batch), outputs and
aliases (the donated state); total = arguments + outputs - aliases + temp.

The schedule decides whether remat saves anything. XLA:CPU's default scheduler
orders the program for concurrency, and under it every policy saves a few
percent at most, although the recomputation is in the compiled program (more
dots than without remat). `--scheduler=memory` sets
`--xla_cpu_enable_concurrency_optimized_scheduler=false`, XLA:CPU's
memory-minimising scheduler, under which remat saves what one expects. XLA:CPU
still plans buffers with its own passes (and may widen bf16 work): the figures
compare the policies on this compiler; a TPU/GPU plans differently. `--smoke`
compiles config `tiny` (global batch 16) in about a minute.
"""
from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import sys  # noqa: E402

from absl import app, flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POLICIES = ("none", "full", "dots", "dots_no_batch")
# --scheduler -> the XLA flag it adds (read when the backend starts).
SCHEDULERS = {"default": "", "memory": "--xla_cpu_enable_concurrency_optimized_scheduler=false"}
GIB = 2**30


def _define_flags() -> None:
  """Flags exist only when this file is the main program (the test imports `run`)."""
  flags.DEFINE_string("config", "bert_base", "Config name (configs/<name>.py).")
  flags.DEFINE_list("policies", list(POLICIES), "model.remat policies to compile.")
  flags.DEFINE_integer("global_batch", None, "Override the config's global batch.")
  flags.DEFINE_enum("scheduler", "default", list(SCHEDULERS), "XLA:CPU's default (concurrency) "
                    "scheduler, or its memory-minimising one.")
  flags.DEFINE_string("output", "benchmarks/results/remat_memory.json", "JSON path.")
  flags.DEFINE_bool("merge", False, "Keep the records already in --output (other schedulers, "
                    "policies) and replace only those measured now.")
  flags.DEFINE_bool("smoke", False, "Config tiny: a quick end-to-end check.")


def use_scheduler(scheduler: str) -> None:
  """Adds the scheduler's XLA flag; only possible before JAX starts its backend."""
  from jax._src import xla_bridge
  flag = SCHEDULERS[scheduler]
  if flag and flag not in os.environ.get("XLA_FLAGS", ""):
    if xla_bridge.backends_are_initialized():
      raise RuntimeError(f"--scheduler={scheduler} needs XLA_FLAGS={flag} before JAX starts")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()


def load_config(name: str, policy: str, global_batch=None):
  """configs/<name>.py:loss_ema with model.remat=policy (and the batch, if given)."""
  from tokendrop_jax import config_lib
  config = config_lib.load_file(os.path.join(ROOT, "configs", f"{name}.py"), "loss_ema")
  config.model.remat = policy
  if global_batch:
    config.data.global_batch_size = global_batch
  return config


def abstract_batch(config, mesh) -> dict:
  """ShapeDtypeStructs of one global batch, split over ('data', 'fsdp') like a real one."""
  from tokendrop_jax.training import aot
  d = config.data
  return aot.abstract_batch(mesh, d.global_batch_size, d.seq_len, d.max_predictions_per_seq)


def memory(compiled) -> dict:
  """Per-device bytes of a compiled program (see the module docstring)."""
  m = compiled.memory_analysis()
  out = {"argument_bytes": m.argument_size_in_bytes, "output_bytes": m.output_size_in_bytes,
         "alias_bytes": m.alias_size_in_bytes, "temp_bytes": m.temp_size_in_bytes}
  out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                        + out["temp_bytes"])
  return out


def policy_records(name: str, policy: str, global_batch=None, scheduler="default") -> list[dict]:
  """One record per step (full, drop<keep>) of config `name` under `policy`."""
  import flax.linen as nn
  import jax
  from tokendrop_jax import benchmark, synthetic
  from tokendrop_jax.training import loop

  config = load_config(name, policy, global_batch)
  run = loop.build(config, synthetic.SPECIAL_IDS)
  batch = abstract_batch(config, run.layout.mesh)
  records = []
  with jax.set_mesh(run.layout.mesh), nn.logical_axis_rules(run.layout.rules):
    for kind, fn in run.train_steps.items():  # loss_ema: one full and one drop kind
      c = benchmark.timed(lambda f=fn: f.lower(run.layout.abstract, batch).compile())
      records.append({"config": name, "scheduler": scheduler, "policy": policy,
                      "step": kind.name, "compile_s": round(c.wall_s, 1), **memory(c.value)})
      print(f"{name} remat={policy} {kind.name} ({scheduler} scheduler): temp "
            f"{records[-1]['temp_bytes'] / GIB:.2f} GiB per device "
            f"({records[-1]['compile_s']} s to compile)", flush=True)
  return records


def markdown(results) -> str:
  """The README table: temp GiB per device per policy, a column per scheduler and step."""
  cols = sorted({(r["scheduler"], r["step"]) for r in results["records"]},
                key=lambda c: (c[0] != "default", c[1] != "full", c[1]))
  rows: dict[str, dict] = {}
  for r in results["records"]:
    rows.setdefault(r["policy"], {})[(r["scheduler"], r["step"])] = r["temp_bytes"] / GIB
  lines = ["| `model.remat` | " + " | ".join(f"{step}, {sched} scheduler" for sched, step in cols)
           + " |", "| --- |" + " --- |" * len(cols)]
  for policy in sorted(rows, key=lambda p: POLICIES.index(p) if p in POLICIES else len(POLICIES)):
    lines.append(f"| `{policy}` | " + " | ".join(
        f"{rows[policy][c]:.2f}" if c in rows[policy] else "" for c in cols) + " |")
  return "\n".join(lines)


def run(config="bert_base", policies=POLICIES, global_batch=None, scheduler="default",
        output="benchmarks/results/remat_memory.json", merge=False, smoke=False,
        command=None) -> dict:
  """Compiles every policy's steps, writes the JSON at `output`, prints the table."""
  use_scheduler(scheduler)
  import jax
  from tokendrop_jax import benchmark

  if smoke:
    config = "tiny"
  first = load_config(config, "none", global_batch)
  # "devices" is also in the run's environment; here it is what a --merge must match.
  facts = {"config": config, "global_batch": first.data.global_batch_size,
           "seq_len": first.data.seq_len, "keep_tokens": first.token_drop.keep_tokens,
           "dtype": first.model.dtype,
           "devices": f"{len(jax.devices())} x {jax.devices()[0].device_kind}",
           "metric": "GiB = 2**30 bytes of compiled.memory_analysis() per device, data "
                     "parallel over all devices"}
  results = (merge and benchmark.read_results(output)) or {**facts, "commands": [], "records": []}
  if any(results.get(k) != v for k, v in facts.items()):
    raise ValueError(f"--merge: {output} holds another config, batch or device count")
  new = [r for policy in policies for r in policy_records(config, policy, global_batch, scheduler)]
  measured = {(r["scheduler"], r["policy"], r["step"]) for r in new}
  results["records"] = [r for r in results["records"]
                        if (r["scheduler"], r["policy"], r["step"]) not in measured] + new
  results["commands"].append(command or " ".join(sys.argv))
  print(markdown(results))
  return benchmark.write_results(results, output)


def main(argv):
  del argv
  f = flags.FLAGS
  run(config=f.config, policies=f.policies, global_batch=f.global_batch, scheduler=f.scheduler,
      output=f.output, merge=f.merge, smoke=f.smoke)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
