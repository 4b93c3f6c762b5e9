"""Ahead-of-time compilation of a run's steps, and what the compiler says of each.

`loop.build` on any devices (the TPU compiler's, for a slice that is not here)
gives the jitted steps; `compile_step` lowers one with abstract arguments and
reads per-device memory, collectives and FLOPs from the compiled program. A
program that does not fit is refused by the TPU compiler itself (RESOURCE_EXHAUSTED):
`compile_step` returns that message and the sizes in it instead of raising.
"""
from __future__ import annotations

import re
import time
from typing import Any, Callable

import jax

from tokendrop_jax.training import collectives, sharding

# (name, shape of a row, dtype) of a pretraining batch; rows are batch-sharded.
_BATCH_FIELDS = (("input_ids", "seq", "int32"), ("input_mask", "seq", "int32"),
                 ("token_type_ids", "seq", "int32"), ("masked_lm_positions", "pred", "int32"),
                 ("masked_lm_ids", "pred", "int32"), ("masked_lm_weights", "pred", "float32"))
# The TPU compiler's words when a program is too big for the chip: "...the total memory
# required for HLO temporaries (44.23G) exceeds available HBM (15.75G)." (G = GiB).
_NEEDED = re.compile(r"required for[^(]*\(([\d.]+)\s*([KMGT]?)i?B?\)")
_AVAILABLE = re.compile(r"available HBM\s*\(([\d.]+)\s*([KMGT]?)i?B?\)")
# Its words when the lowered program (its code and scoped buffers added) is over by a little:
# "...Ran out of memory in memory space hbm. Used 15.77G of 15.75G hbm. Exceeded ...".
_USED = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# Its words when one of its kernels does not fit a core's on-chip scratch memory instead
# ("Ran out of memory in memory space vmem. Used 16.73M of 16.00M vmem."): not HBM.
_SPACE = re.compile(r"out of memory in memory space (\w+)", re.IGNORECASE)


def abstract_batch(mesh, batch_size: int, seq_len: int, num_predictions: int) -> dict:
  """ShapeDtypeStructs of one global batch, sharded over the batch axes as the loop feeds it."""
  sh = sharding.batch_sharding(mesh)
  width = {"seq": seq_len, "pred": num_predictions}
  return {name: jax.ShapeDtypeStruct((batch_size, width[w]), dtype, sharding=sh)
          for name, w, dtype in _BATCH_FIELDS}


def _bytes(number: str, unit: str) -> int:
  return int(float(number) * _UNITS[unit])


def oom_sizes(message: str) -> tuple[int, int] | None:
  """(needed, available) bytes from the compiler's out-of-memory message, if it says them."""
  needed, available = _NEEDED.search(message), _AVAILABLE.search(message)
  if needed is None or available is None:
    used = _USED.search(message)
    return (_bytes(*used.groups()[:2]), _bytes(*used.groups()[2:])) if used else None
  return _bytes(*needed.groups()), _bytes(*available.groups())


def memory_space(message: str) -> str:
  """The memory the compiler ran out of: 'hbm' (the chip's), or the on-chip space it names."""
  m = _SPACE.search(message)
  return m.group(1).lower() if m else "hbm"


def is_oom(error: Exception) -> bool:
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "exceeds available" in text or "Ran out of memory" in text


def compile_step(fn: Callable, args: tuple, hbm_bytes: int | None = None) -> dict[str, Any]:
  """Compiles `fn.lower(*args)` -> per-device memory, collective bytes by kind, the
  compiler's FLOPs, compile seconds, and the peak as a fraction of `hbm_bytes`; `fits`
  False with the compiler's `error` if it refused for memory. Any other compile error
  propagates."""
  t0 = time.perf_counter()
  lowered = fn.lower(*args)
  try:
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except  (XlaRuntimeError)
    if not is_oom(e):
      raise
    sizes = oom_sizes(str(e))
    out = {"fits": False, "compile_s": time.perf_counter() - t0,
           "error": " ".join(str(e).split())[:2000], "memory_space": memory_space(str(e))}
    if sizes:
      out["needed_bytes"], out["available_bytes"] = sizes
    return out
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) and cost else cost) or {}
  by_kind: dict[str, int] = {}
  for c in collectives.collectives(compiled.as_text()):
    by_kind[c.op] = by_kind.get(c.op, 0) + c.bytes
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
          + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  out = {
      "fits": True,  # the TPU compiler refuses what its chip cannot hold (above)
      "compile_s": compile_s,
      "argument_bytes": mem.argument_size_in_bytes,
      "output_bytes": mem.output_size_in_bytes,
      "alias_bytes": mem.alias_size_in_bytes,
      "temp_bytes": mem.temp_size_in_bytes,
      "code_bytes": mem.generated_code_size_in_bytes,
      # Arguments and outputs, less what the donated state shares between them, plus
      # temporaries and the program: what the chip holds at the step's peak.
      "peak_bytes": peak,
      "collective_bytes": by_kind,
      "collective_bytes_total": sum(by_kind.values()),
      "compiler_flops_per_device": float(cost.get("flops", 0.0)),
  }
  if hbm_bytes is not None:
    out["hbm_fraction"] = peak / hbm_bytes
  return out
