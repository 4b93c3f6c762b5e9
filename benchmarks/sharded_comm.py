"""What each sharded train step communicates and holds per device, from its compiled program.

  nice -n 10 .venv/bin/python benchmarks/sharded_comm.py \
      [--configs=bert_base,bert_large] [--meshes=8x1x1,1x8x1,2x2x2] [--kinds=full,drop256] \
      [--global_batch=N] [--output=benchmarks/results/sharded_comm.json] [--merge] [--smoke]

Why: `tests/test_sharded_comm.py` checks that a drop step moves no more than the
full step on `tiny`; this script gives the sizes at BERT-base/large scale, per
mesh and step kind, next to what the parallelism strictly has to move.

How: every step kind of the run (`loop.build(...).train_steps`, e.g. "full" and
"drop256") is compiled ahead of time for 8 fake CPU devices with abstract
arguments, so nothing is allocated: a 512 x 512 batch of BERT-large compiles in
under a minute per step kind on 2 CPU cores. Compilation runs under the config's logical-axis rules, as the
training loop (`training/runner.py`) runs the step: without them the
activations' sharding constraints are no-ops and XLA compiles another program.
From each compiled program:

  collectives   every all-gather, all-reduce, reduce-scatter, all-to-all and
                collective-permute (`training/collectives.py`); the metric is the
                bytes of each collective's *result* arrays on one device, for one
                step (an all-gather counts the gathered size, a reduce-scatter its
                shard). MB = 1e6 bytes.
  global batch  how many collectives have an array with a dimension equal to the
                global batch (the test's check), and which arrays (HLO op_name).
                If the global batch equals another size of the config (bert_base:
                batch = seq_len = max_position = 512) that count also matches
                those arrays (`batch_dim_collides_with`), so the step is compiled
                once more at the next batch size no dimension has (`probe`;
                marked † in the table) and counted there.
  memory        `compiled.memory_analysis()` per device: arguments, outputs,
                temporaries, generated code; total = argument + output - alias
                + temp + generated code (donated state aliases its output).

The analytic minimum, in the same metric, per parameter leaf of n bytes (f32)
whose sharding splits it k_a ways over mesh axis a (k_tensor, k_fsdp; the batch
is split over the batch axes data and fsdp), with local = n / prod(k_a):

  gradient  the gradient must be summed over every batch axis of size > 1:
            a reduce-scatter (result `local`) over the batch axes that shard the
            leaf (FSDP) and an all-reduce (result `local`) over the others.
            Data parallel 8: one all-reduce of every gradient = the f32 parameter
            bytes P. FSDP 8: reduce-scatter P/8 (+ all-reduce of the few leaves
            without an `embed` dim, which FSDP leaves replicated).
  gather    a leaf sharded over a batch axis is all-gathered once for the
            forward pass (result n / k_tensor) and kept for the backward pass;
            `minimum_regather_bytes` adds a second gather for the backward pass
            (what a step that does not keep the gathered weights needs).
  tensor    for tensor > 1, Megatron's activation all-reduces, in the compute
            dtype, of [b, T, hidden] with b = global batch / (data * fsdp): per
            layer 2 in the forward pass (attention and MLP outputs) and 2 in the
            backward pass (their inputs' gradients), T the rows that layer
            updates (seq_len, or keep in the drop step's middle layers; the
            cross layer's attention-input gradient has seq_len rows), + 1 for
            the vocab-split word-embedding lookup [b, seq_len, hidden] + 1 for
            the MLM head's input gradient [b, P, hidden]. The [b, P] softmax
            reductions and the head transform's split are not counted.

For 2 x 2 x 2 the minimum is the sum of the three terms: gradients
reduce-scattered over fsdp and all-reduced over data (both at the 1/4 shard of
a tensor-split leaf), weights gathered over fsdp, plus the tensor term. The
steps' [vocab] loss-EMA reduction (4 * vocab bytes) and scalars are not in it.

XLA:CPU compiles with its own passes and buffer planning: its all-reduce-promotion
widens bf16 all-reduces to f32, and no pass turns the partitioner's all-reduce +
slice of an FSDP gradient into a reduce-scatter. The numbers say what this code
asks of the SPMD partitioner on CPU, not what TPU/GPU XLA emits.
`--smoke` compiles config `tiny` at global batch 24 (a size no other dimension
of `tiny` has) in well under a minute.
"""
from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import collections  # noqa: E402
import contextlib  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402

from absl import app, flags  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHES = ("8x1x1", "1x8x1", "2x2x2")  # data x fsdp x tensor
OPS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
SMOKE = dict(configs=("tiny",), global_batch=24)
MB, GIB = 1e6, 2**30


def _define_flags() -> None:
  """Flags exist only when this file is the main program (the test imports `run`)."""
  flags.DEFINE_list("configs", ["bert_base", "bert_large"], "Config names (configs/<name>.py).")
  flags.DEFINE_string("variant", "loss_ema", "Config variant (importance strategy[+options]).")
  flags.DEFINE_list("meshes", list(MESHES), "Meshes as data x fsdp x tensor, e.g. 2x2x2.")
  flags.DEFINE_list("kinds", [], "Step kinds to compile (e.g. full,drop256; 'drop' = every "
                    "plain drop kind); default every kind of the run.")
  flags.DEFINE_integer("global_batch", None, "Override the config's global batch.")
  flags.DEFINE_string("output", "benchmarks/results/sharded_comm.json", "JSON path (PNG beside).")
  flags.DEFINE_bool("merge", False, "Add to the records already in --output instead of replacing.")
  flags.DEFINE_bool("logical_rules", True, "Compile under the config's logical-axis rules, as "
                    "training does (False: as tests/test_sharded_comm.py compiles).")
  flags.DEFINE_bool("smoke", False, "Config tiny at global batch 24: a quick end-to-end check.")


def load_config(name: str, variant: str):
  from tokendrop_jax import config_lib
  return config_lib.load_file(os.path.join(ROOT, "configs", f"{name}.py"), variant)


def parse_mesh(name: str) -> tuple[int, int, int]:
  data, fsdp, tensor = (int(x) for x in name.split("x"))
  return data, fsdp, tensor


def abstract_batch(config, mesh, global_batch: int) -> dict:
  """ShapeDtypeStructs of one global batch, split over ('data', 'fsdp') like a real one."""
  from tokendrop_jax.training import aot
  d = config.data
  return aot.abstract_batch(mesh, global_batch, d.seq_len, d.max_predictions_per_seq)


# ---------------------------------------------------------------------------
# The analytic minimum.


def _split(named_sharding) -> dict[str, int]:
  """{mesh axis: how many ways it splits this leaf}."""
  mesh, ways = named_sharding.mesh, {}
  for entry in named_sharding.spec:
    for axis in (entry if isinstance(entry, tuple) else (entry,)):
      if axis is not None:
        ways[axis] = ways.get(axis, 1) * mesh.shape[axis]
  return ways


def parameter_minimum(abstract_params, param_shardings, mesh_shape: dict) -> dict:
  """Gradient-reduction and weight-gather bytes per device (see the module docstring)."""
  import jax
  batch_axes = ("data", "fsdp")
  grad = gather = 0
  for leaf, sh in zip(jax.tree.leaves(abstract_params), jax.tree.leaves(param_shardings)):
    n = math.prod(leaf.shape) * 4  # f32 gradients and weights
    ways = _split(sh)
    local = n / math.prod(ways.values())
    sharded_batch_axes = [a for a in batch_axes if ways.get(a, 1) > 1]
    if sharded_batch_axes:
      grad += local  # reduce-scatter over the axes that shard the leaf
      gather += local * math.prod(ways[a] for a in sharded_batch_axes)  # = n / k_tensor
    if any(mesh_shape[a] > 1 and ways.get(a, 1) == 1 for a in batch_axes):
      grad += local  # all-reduce over the batch axes that do not shard it
  return {"gradient": grad, "gather": gather}


def tensor_minimum(config, kind, global_batch: int, mesh_shape: dict) -> float:
  """Megatron's activation all-reduces per device (0 without tensor parallelism)."""
  import numpy as np
  from tokendrop_jax import config_lib
  if mesh_shape["tensor"] == 1:
    return 0.0
  m, d = config_lib.model_config(config), config.data
  b = global_batch // (mesh_shape["data"] * mesh_shape["fsdp"])  # rows per device
  row = b * m.hidden_size * np.dtype(m.dtype).itemsize  # bytes of [b, 1 token, hidden]
  seq, layers, split = d.seq_len, m.num_layers, m.split_layer
  rows = 0
  for i in range(layers):
    middle = not kind.full and split <= i < layers - 1
    t = kind.keep_tokens if middle else seq
    backward_attention_input = seq if i == split and not kind.full else t  # cross layer: keys
    rows += 2 * t + backward_attention_input + t
  if kind.consistency:  # the extra full forward of ScTD
    rows += 2 * seq * layers + seq
  rows += seq + d.max_predictions_per_seq  # embedding lookup; MLM head input gradient
  return float(rows * row)


# ---------------------------------------------------------------------------
# One compiled step.


def _source(line: str) -> str:
  """The jax op that made an HLO line, layer numbers folded: 'bert/layer_*/attention/...'."""
  m = re.search(r'op_name="([^"]*)"', line)
  name = m.group(1) if m else "?"
  name = re.sub(r"^jit\([^)]*\)/", "", name)
  return re.sub(r"layer_\d+", "layer_*", name)


def _shape_text(shapes) -> str:
  return ", ".join(f"{dt}[{','.join(map(str, dims))}]" for dt, dims in shapes)


def measure(compiled, global_batch: int) -> dict:
  """Collective bytes by op, the global-batch-sized ones, and memory, of one program."""
  from tokendrop_jax.training import collectives
  text = compiled.as_text()
  found, global_sized = [], collections.Counter()
  for line in text.splitlines():  # the parser is line-based: keep each op's metadata
    for c in collectives.collectives(line):
      found.append(c)
      if c.has_dim(global_batch):
        global_sized[(c.op, _shape_text(c.shapes), _source(line))] += 1
  by_op = {op: sum(c.bytes for c in found if c.op == op) for op in OPS}
  count = {op: sum(c.op == op for c in found) for op in OPS}
  assert collectives.total_bytes(found) == sum(by_op.values())
  mem = compiled.memory_analysis()
  memory = {"argument_bytes": mem.argument_size_in_bytes, "output_bytes": mem.output_size_in_bytes,
            "alias_bytes": mem.alias_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
            "generated_code_bytes": mem.generated_code_size_in_bytes}
  memory["total_bytes"] = (memory["argument_bytes"] + memory["output_bytes"] - memory["alias_bytes"]
                           + memory["temp_bytes"] + memory["generated_code_bytes"])
  return {
      "collective_bytes": by_op, "collective_count": count,
      "total_bytes": collectives.total_bytes(found),
      "global_batch_collectives": sum(global_sized.values()),
      "global_batch_arrays": [{"op": op, "shapes": shapes, "source": src, "count": n}
                              for (op, shapes, src), n in sorted(global_sized.items())],
      "memory": memory}


def sizes(config) -> dict[str, int]:
  """The config's sizes that an array dimension can have besides the batch."""
  m, d = config.model, config.data
  return {"seq_len": d.seq_len, "max_position": m.max_position, "hidden_size": m.hidden_size,
          "intermediate_size": m.intermediate_size, "vocab_size": m.vocab_size,
          "num_heads": m.num_heads, "head_dim": m.hidden_size // m.num_heads,
          "max_predictions_per_seq": d.max_predictions_per_seq,
          "keep_tokens": config.token_drop.keep_tokens}


def probe_batch(config, global_batch: int, split: int):
  """None if no other size equals `global_batch`; else the next batch (a multiple of
  `split` more) that no size equals, to count global-batch collectives unambiguously."""
  taken = set(sizes(config).values())
  if global_batch not in taken:
    return None
  probe = global_batch + split
  while probe in taken:
    probe += split
  return probe


def _compile(run, fn, batch, logical_rules: bool):
  import flax.linen as nn
  import jax
  rules = nn.logical_axis_rules(run.layout.rules) if logical_rules else contextlib.nullcontext()
  with jax.set_mesh(run.layout.mesh), rules:
    return fn.lower(run.layout.abstract, batch).compile()


def config_records(name: str, variant: str, meshes, kinds, global_batch, logical_rules: bool):
  """Yields one record per (mesh, kind) of config `name`."""
  from tokendrop_jax import benchmark, synthetic
  from tokendrop_jax.training import loop

  for mesh_name in meshes:
    config = load_config(name, variant)
    b = global_batch or config.data.global_batch_size
    config.data.global_batch_size = b
    data, fsdp, tensor = parse_mesh(mesh_name)
    config.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
    # A fresh build per mesh: jit caches the trace, and the flax rules context is not in its key.
    run = loop.build(config, synthetic.SPECIAL_IDS)
    mesh_shape = dict(run.layout.mesh.shape)
    params = parameter_minimum(run.layout.abstract.params, run.layout.sharding.params, mesh_shape)
    batch = abstract_batch(config, run.layout.mesh, b)
    probe = probe_batch(config, b, data * fsdp * config.optim.grad_accum_steps)
    for kind, fn in run.train_steps.items():
      if kinds and not (kind.name in kinds or ("drop" in kinds and not kind.full
                                               and not kind.consistency)):
        continue
      compiled = benchmark.timed(lambda f=fn: _compile(run, f, batch, logical_rules))
      record = {"config": name, "mesh": mesh_name, "data": data, "fsdp": fsdp, "tensor": tensor,
                "kind": kind.name, "global_batch": b, "logical_rules": logical_rules,
                "compile_s": round(compiled.wall_s, 1)}
      record.update(measure(compiled.value, b))
      if probe:  # the same step at a batch size no other dimension has
        m = measure(_compile(run, fn, abstract_batch(config, run.layout.mesh, probe),
                             logical_rules), probe)
        record["probe"] = {"global_batch": probe, "global_batch_collectives":
                           m["global_batch_collectives"], "global_batch_arrays":
                           m["global_batch_arrays"], "total_bytes": m["total_bytes"]}
      tensor_term = tensor_minimum(config, kind, b, mesh_shape)
      record["minimum"] = {"gradient_bytes": params["gradient"], "gather_bytes": params["gather"],
                           "tensor_activation_bytes": tensor_term}
      record["minimum_bytes"] = params["gradient"] + params["gather"] + tensor_term
      record["minimum_regather_bytes"] = record["minimum_bytes"] + params["gather"]
      print(f"{name} {mesh_name} {kind.name}: {record['total_bytes'] / MB:.1f} MB collectives "
            f"(minimum {record['minimum_bytes'] / MB:.1f}), "
            f"{batch_sized(record)} global-batch-sized, "
            f"temp {record['memory']['temp_bytes'] / GIB:.2f} GiB, "
            f"compiled in {record['compile_s']:.0f} s", flush=True)
      yield record


def batch_sized(record) -> str:
  """The global-batch-sized collectives count; from the probe batch when there is one."""
  if "probe" in record:
    return f"{record['probe']['global_batch_collectives']}†"
  return str(record["global_batch_collectives"])


def config_facts(name: str, variant: str, global_batch) -> dict:
  """Machine-independent sizes of a config (from its abstract parameters)."""
  import jax
  from tokendrop_jax import config_lib
  from tokendrop_jax.model.bert import BertForPretraining
  from tokendrop_jax.training import step_plan
  config = load_config(name, variant)
  b = global_batch or config.data.global_batch_size
  d, m = config.data, config.model
  model = BertForPretraining(config_lib.model_config(config))
  ids = jax.ShapeDtypeStruct((1, d.seq_len), "int32")
  pos = jax.ShapeDtypeStruct((1, d.max_predictions_per_seq), "int32")
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), ids, ids, ids, pos)
  count = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
  return {"variant": variant, "global_batch": b, "seq_len": d.seq_len,
          "keep_tokens": config.token_drop.keep_tokens, "compute_dtype": m.dtype,
          "num_params": count, "param_bytes_f32": 4 * count,
          "kinds": [k.name for k in step_plan.kinds(config)],
          "batch_dim_collides_with": [k for k, v in sizes(config).items() if v == b]}


# ---------------------------------------------------------------------------
# Report.


def markdown(results) -> str:
  """One row per record: collective MB per device by op, total, minimum, memory."""
  lines = ["| config | mesh d×f×t | kind | all-gather | all-reduce | reduce-scatter | all-to-all "
           "| permute | **total MB** | minimum MB | global-batch collectives | temp GiB "
           "| total GiB |", "|" + " --- |" * 13]
  for r in results["records"]:
    c = r["collective_bytes"]
    lines.append(
        f"| {r['config']} | {r['mesh'].replace('x', '×')} | {r['kind']} | "
        + " | ".join(f"{c[op] / MB:.1f}" for op in OPS)
        + f" | **{r['total_bytes'] / MB:.1f}** | {r['minimum_bytes'] / MB:.1f} "
        f"| {batch_sized(r)} | {r['memory']['temp_bytes'] / GIB:.2f} "
        f"| {r['memory']['total_bytes'] / GIB:.2f} |")
  probes = collections.defaultdict(set)  # (config, batch) -> the probe batches
  for r in results["records"]:
    if "probe" in r:
      probes[(r["config"], r["global_batch"])].add(r["probe"]["global_batch"])
  for (name, b), sizes_ in sorted(probes.items()):
    lines.append(f"\n† {name}: global batch {b} is also a size of the model; counted on the same "
                 f"step compiled at global batch {' or '.join(map(str, sorted(sizes_)))}.")
  return "\n".join(lines)


def plot(results, png: str) -> None:
  """Grouped bars per config: collective MB per device per kind per mesh; minimum as a marker."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  configs = list(dict.fromkeys(r["config"] for r in results["records"]))
  fig, axes = plt.subplots(1, len(configs), figsize=(6 * len(configs), 4.5), squeeze=False)
  for ax, name in zip(axes[0], configs):
    recs = [r for r in results["records"] if r["config"] == name]
    meshes = list(dict.fromkeys(r["mesh"] for r in recs))
    kinds = list(dict.fromkeys(r["kind"] for r in recs))
    width = 0.8 / len(kinds)
    for j, kind in enumerate(kinds):
      for i, mesh in enumerate(meshes):
        r = next((r for r in recs if r["mesh"] == mesh and r["kind"] == kind), None)
        if r is None:
          continue
        x = i + (j - (len(kinds) - 1) / 2) * width
        ax.bar(x, r["total_bytes"] / MB, width, color=f"C{j}", label=kind if i == 0 else None)
        ax.annotate(f"{r['total_bytes'] / MB:,.0f}", (x, r["total_bytes"] / MB), ha="center",
                    va="bottom", fontsize=8)
        ax.plot(x, r["minimum_bytes"] / MB, "k_", markersize=18, markeredgewidth=2,
                label="analytic minimum" if i == 0 and j == 0 else None)
    ax.set_xticks(range(len(meshes)), [f"{m}\n(data×fsdp×tensor)" for m in meshes])
    ax.set_yscale("log")  # data parallel and tensor parallel differ ~30x
    ax.set_ylabel("collective MB per device per step (log)")
    ax.set_title(f"{name}, global batch {results['configs'][name]['global_batch']}")
    ax.legend()
  fig.tight_layout()
  fig.savefig(png, dpi=120)
  plt.close(fig)


def not_run(results) -> list[str]:
  """'config mesh kind' of the default grid (MESHES x every kind) with no record."""
  done = {(r["config"], r["mesh"], r["kind"]) for r in results["records"]}
  return [f"{name} {mesh} {kind}" for name, facts in results["configs"].items()
          for mesh in MESHES for kind in facts["kinds"] if (name, mesh, kind) not in done]


def run(configs=("bert_base", "bert_large"), meshes=MESHES, kinds=(), global_batch=None,
        output="benchmarks/results/sharded_comm.json", merge=False, logical_rules=True,
        smoke=False, variant="loss_ema", command=None) -> dict:
  """Compiles, measures, writes JSON + PNG at `output`, prints the table; returns the results."""
  from tokendrop_jax import benchmark
  if smoke:
    configs, global_batch = SMOKE["configs"], SMOKE["global_batch"]
  results = (merge and benchmark.read_results(output)) or {"records": [], "configs": {},
                                                           "commands": []}
  for name in configs:
    facts = config_facts(name, variant, global_batch)
    results["configs"][name] = facts
    for record in config_records(name, variant, meshes, kinds, global_batch, logical_rules):
      key = (record["config"], record["mesh"], record["kind"])
      results["records"] = [r for r in results["records"]
                            if (r["config"], r["mesh"], r["kind"]) != key] + [record]
  results["commands"].append(command or " ".join(sys.argv))
  results.update(
      metric="bytes of each collective's result arrays, per device, per train step",
      minimum="see the docstring of benchmarks/sharded_comm.py")
  results["not_run"] = not_run(results)
  print(markdown(results))
  if results["not_run"]:
    print("not run:", ", ".join(results["not_run"]))
  return benchmark.write_results(results, output, plot)


def main(argv):
  del argv
  f = flags.FLAGS
  run(configs=f.configs, meshes=f.meshes, kinds=f.kinds, global_batch=f.global_batch,
      output=f.output, merge=f.merge, logical_rules=f.logical_rules, smoke=f.smoke,
      variant=f.variant)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
