"""The kernels of a compiled program, read from its HLO text: what each computes, which
part of the model it serves, the bytes it reads and writes, its matmul FLOPs, and the
least time a chip could take for it (its roofline floor).

A step's time on an accelerator goes to kernels: matmuls near the chip's peak, and many
memory-bound fusions (layer norms, softmax, GELU, bias gradients, layout copies, the
optimizer) whose floor is their bytes over the memory bandwidth. `inventory` lists the
top-level instructions of the entry computation (each one kernel, or one library call:
cuBLAS, cuDNN); `floor_s` sums max(FLOPs / peak, bytes / bandwidth) over them. Profiles
(`benchmarks/profile_step.py`) and compile-only reports (`benchmarks/gpu_floor.py`) label
instructions with the same `hlo_labels`.

Bytes are an upper bound of the kernel's memory traffic: every operand is counted once in
full, though an in-place update (a scatter into its operand) or an operand read from the
cache costs less. A while loop's body is not unrolled: its instruction counts once, with
kind "loop" (the steps compiled here have none unless `model.scan_layers`).
"""
from __future__ import annotations

import collections
import math
import re

from tokendrop_jax.training.collectives import _ARRAY, _itemsize

# Part of the model, from the op_name metadata (first match wins; order matters).
PARTS = (
    ("optimizer", r"optax|adam|scale_by|clip|/update|apply_updates|global_norm"),
    ("random bits", r"random_bits|threefry|rng_bit|random_wrap|random_unwrap|dropout"),
    ("importance update", r"importance|segment_sum|loss_ema"),
    ("token selection", r"select_kept|sort|top_k|gather_tokens|scatter_tokens"),
    ("mlm head", r"mlm|predictions|attend|log_softmax|cls_head|head"),
    ("attention", r"attention|einsum.*bhqd|softmax|HeadProjection|query|key|value"),
    ("ffn", r"intermediate|ffn|mlp|gelu|output_dense|Dense_1|dense"),
    ("layer norm", r"layer_norm|LayerNorm"),
    ("embeddings", r"embed|Embed|position|token_type"),
)
# What an instruction computes, from its opcode or fused computation.
KINDS = (("attention kernel", r"custom-call.*__cudnn\$fmha"),
         ("dot", r" dot\(| convolution\(|custom-call.*(matmul|gemm)"),
         ("random bits", r"random_bits|threefry|rng"), ("sort", r" sort\("),
         ("scatter", r" scatter\("), ("gather", r" gather\("), ("reduce", r" reduce\("),
         ("copy/transpose", r" copy\(| transpose\("), ("loop", r" while\("))
# Instructions that launch nothing: names for buffers the program already has.
_NO_KERNEL = {"parameter", "get-tuple-element", "bitcast", "tuple", "constant", "after-all",
              "partition-id", "replica-id", "opt-barrier"}
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\([^=]*?\)|\S+) ([\w\-]+)\((.*)$")


def _computations(hlo_text: str) -> dict[str, str]:
  """computation name -> its body text."""
  out: dict[str, str] = {}
  name, body = None, []
  for line in hlo_text.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
    if m and not line.startswith(" "):
      name, body = m.group(1), []
      continue
    if line.startswith("}") and name:
      out[name] = "\n".join(body)
      name = None
      continue
    if name:
      body.append(line)
  return out


def _entry_name(hlo_text: str) -> str:
  m = re.search(r"^ENTRY %?([\w.\-]+) ", hlo_text, re.MULTILINE)
  if m is None:
    raise ValueError("no ENTRY computation in this HLO text")
  return m.group(1)


def hlo_labels(hlo_text: str, computations: dict[str, str] | None = None) -> dict[str, dict]:
  """instruction name -> {op_name, opcode, kind, shape} from compiled HLO text
  (`computations`: its `_computations`, if the caller has them already)."""
  computations = _computations(hlo_text) if computations is None else computations
  out = {}
  for line in hlo_text.splitlines():
    m = re.match(r"^\s*(?:ROOT )?%?([\w.\-]+) = (?:\([^()]*\)|\S+) ([\w\-]+)\(", line)
    if not m:
      continue
    inst, opcode = m.group(1), m.group(2)
    op = re.search(r'op_name="([^"]*)"', line)
    called = re.findall(r"calls=%?([\w.\-]+)", line)
    text = line + "\n" + "\n".join(computations.get(c, "") for c in called)
    kind = next((k for k, pat in KINDS if re.search(pat, text)), "elementwise")
    if kind == "loop" and re.search(r"\bu32\[", line):  # jax's threefry: a loop of u32 rounds
      kind = "random bits"
    shape = re.match(r"^\s*(?:ROOT )?%?[\w.\-]+ = (\([^()]*\)|\S+)", line).group(1)
    out[inst] = {"op_name": op.group(1) if op else "", "opcode": opcode, "kind": kind,
                 "shape": re.sub(r"\{[^}]*\}", "", shape)}
  return out


def part_of(op_name: str) -> str:
  for part, pattern in PARTS:
    if re.search(pattern, op_name, re.IGNORECASE):
      return part
  return "rest of a layer (GELU, residuals, biases)" if "/layer_" in op_name else "other"


def pass_of(op_name: str) -> str:
  """forward / backward (jax's transpose of the forward) / the rest (optimizer, metrics)."""
  if "transpose(" in op_name:
    return "backward"
  return "forward" if "jvp(" in op_name else "rest"


def shape_bytes(shape: str) -> int:
  """Bytes of every array in an HLO shape: 'bf16[2,3]{1,0}' or a tuple of them."""
  return sum(_itemsize(a.group("dtype")) * math.prod(int(d) for d in a.group("dims").split(",")
                                                     if d)
             for a in _ARRAY.finditer(re.sub(r"\{[^}]*\}", "", shape)))


def _dims(shape: str) -> list[int]:
  m = _ARRAY.search(shape)
  return [int(d) for d in m.group("dims").split(",") if d] if m else []


def _dot_flops(body: str, shapes: dict[str, str] | None = None) -> float:
  """2 x output elements x contracted size, summed over the dots in `body` (a fused
  computation, or one instruction whose operands' shapes are in `shapes`)."""
  if shapes is None:
    shapes = {m.group(1): m.group(2) for m in re.finditer(
        r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ", body, re.MULTILINE)}
  flops = 0.0
  for m in re.finditer(r"= (\S+) dot\(%?([\w.\-]+), [^)]*\).*?lhs_contracting_dims=\{([\d,]*)\}",
                       body):
    out, lhs, contracting = m.groups()
    lhs_dims = _dims(shapes.get(lhs, ""))
    k = math.prod(lhs_dims[int(i)] for i in contracting.split(",") if i and lhs_dims)
    flops += 2.0 * math.prod(_dims(out)) * k
  return flops


def _fmha_flops(line: str) -> float:
  """cuDNN's fused attention: q [b, sq, h, d] and k [b, sk, h, d] (its operand layouts).
  Forward: QK^T and PV, 4*b*h*sq*sk*d; backward: those recomputed or transposed, five
  matmuls, 2.5 times the forward."""
  layouts = re.search(r"operand_layout_constraints=\{((?:[^{}]|\{[^{}]*\})*)\}", line)
  arrays = _ARRAY.findall(layouts.group(1)) if layouts else []
  if len(arrays) < 2:
    return 0.0
  (_, q), (_, k) = arrays[:2]
  b, sq, h, d = (int(x) for x in q.split(","))
  sk = int(k.split(",")[1])
  return 4.0 * b * h * sq * sk * d * (2.5 if "Backward" in line else 1.0)


def inventory(hlo_text: str) -> list[dict]:
  """The entry computation's kernels in program order: [{name, kind, part, pass, bytes,
  flops, op_name}]; bytes = operands + results (an upper bound, module docstring)."""
  computations = _computations(hlo_text)
  labels = hlo_labels(hlo_text, computations)
  shapes: dict[str, str] = {}
  out = []
  for line in computations[_entry_name(hlo_text)].splitlines():
    m = _INSTRUCTION.match(line)
    if not m:
      continue
    name, shape, opcode, rest = m.groups()
    shapes[name] = shape
    if opcode in _NO_KERNEL:
      continue
    args = rest.split("), ")[0] if "), " in rest else rest.rstrip(")")
    operands = re.findall(r"%([\w.\-]+)", args)
    label = labels.get(name, {})
    kind = label.get("kind", "elementwise")
    flops = 0.0
    if kind == "attention kernel":
      flops = _fmha_flops(line)
    elif opcode == "dot":
      flops = _dot_flops(line, shapes)
    elif kind == "dot":
      called = re.findall(r"calls=%?([\w.\-]+)", line)
      flops = sum(_dot_flops(computations.get(c, "")) for c in called)
    op_name = label.get("op_name", "")
    out.append({"name": name, "opcode": opcode, "kind": kind, "part": part_of(op_name),
                "pass": pass_of(op_name), "op_name": op_name, "flops": flops,
                "bytes": shape_bytes(shape) + sum(shape_bytes(shapes.get(o, ""))
                                                  for o in operands)})
  return out


def floor_s(kernel: dict, peak_flops: float, bandwidth: float) -> float:
  """The least time a chip of `peak_flops` (/s) and `bandwidth` (bytes/s) takes for it."""
  return max(kernel["flops"] / peak_flops, kernel["bytes"] / bandwidth)


def summary(kernels: list[dict], peak_flops: float, bandwidth: float) -> dict:
  """Kernel count, bytes, FLOPs and floor: in all and grouped by kind, part and pass."""
  def group(key):
    acc = collections.defaultdict(lambda: {"kernels": 0, "bytes": 0, "flops": 0.0,
                                           "floor_s": 0.0})
    for k in kernels:
      g = acc[k[key]]
      g["kernels"] += 1
      g["bytes"] += k["bytes"]
      g["flops"] += k["flops"]
      g["floor_s"] += floor_s(k, peak_flops, bandwidth)
    return dict(sorted(acc.items(), key=lambda kv: -kv[1]["floor_s"]))

  total = sum(floor_s(k, peak_flops, bandwidth) for k in kernels)
  matmul = [k for k in kernels if k["flops"] > 0]
  return {"kernels": len(kernels), "bytes": sum(k["bytes"] for k in kernels),
          "flops": sum(k["flops"] for k in kernels), "floor_s": total,
          "matmul_floor_s": sum(floor_s(k, peak_flops, bandwidth) for k in matmul),
          "by_kind": group("kind"), "by_part": group("part"), "by_pass": group("pass")}
