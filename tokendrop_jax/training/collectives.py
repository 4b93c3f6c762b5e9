"""The collectives of a compiled program, read from its HLO text.

A sharded step can be numerically right and still all-gather the global batch;
only the compiled program shows it. `collectives(compiled.as_text())` lists
every all-gather, all-reduce, reduce-scatter, all-to-all and
collective-permute with the shapes it produces, so tests and benchmarks can
compare what two step kinds communicate.
"""
from __future__ import annotations

import dataclasses
import math
import re

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
# `%name = <result shape(s)> <op>(` ; async pairs count once, at their -start.
_OP = re.compile(r"=\s*(?P<result>.*?)\s(?P<op>" + "|".join(KINDS) + r")(?:-start)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>pred|[subf]\d+|bf16|f8e\w+)\[(?P<dims>[\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Collective:
  op: str                                 # one of KINDS
  shapes: tuple[tuple[str, tuple[int, ...]], ...]  # (dtype, dims) of each result array

  @property
  def bytes(self) -> int:
    """Bytes of the result arrays (for an all-gather: the gathered size)."""
    return sum(_itemsize(dtype) * math.prod(dims) for dtype, dims in self.shapes)

  def has_dim(self, size: int) -> bool:
    return any(size in dims for _, dims in self.shapes)


def _itemsize(dtype: str) -> int:
  """pred -> 1; s32/u8/f32/bf16/f8e4m3fn... -> their bits / 8."""
  if dtype == "pred":
    return 1
  return int(re.match(r"[a-z]+(\d+)", dtype).group(1)) // 8


def collectives(hlo_text: str) -> list[Collective]:
  """Every collective of a compiled module (`jit(f).lower(...).compile().as_text()`)."""
  out = []
  for line in hlo_text.splitlines():
    m = _OP.search(line)
    if m is None or m.group("op") + "-done" in line:
      continue
    result = re.sub(r"/\*.*?\*/", "", m.group("result"))  # tuple index comments
    shapes = tuple((a.group("dtype"), tuple(int(d) for d in a.group("dims").split(",") if d))
                   for a in _ARRAY.finditer(result))
    out.append(Collective(m.group("op"), shapes))
  return out


def total_bytes(items: list[Collective]) -> int:
  return sum(c.bytes for c in items)
