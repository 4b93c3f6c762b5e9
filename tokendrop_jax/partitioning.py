"""The mesh and logical-axis vocabulary that configs name (no JAX devices here).

Parameters carry logical axis names; a rules table maps each to mesh axes, so
data parallel, FSDP and tensor parallel are config changes (`mesh.rules`).
`training/sharding.py` turns these into meshes and shardings; `config_lib`
validates against them before anything touches a device.
"""
from __future__ import annotations

from typing import Any, Iterable, Sequence

MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_AXES = ("batch", "length", "embed", "mlp", "heads", "kv", "vocab", "layers")

# Data parallel over ('data', 'fsdp'); FSDP shards the embed dimension of every
# weight; tensor parallel splits mlp / heads / vocab. With fsdp=tensor=1 this
# is plain data parallelism.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("layers", None),  # the stacked axis of scanned layers (model.scan_layers)
)


def rules_from_config(pairs: Iterable[Sequence[Any]] | None,
                      field: str = "mesh.rules"):
  """Validates a config list of (logical_axis, mesh_axes) pairs into rules.

  mesh_axes may be None, one mesh axis name, or a list/tuple of them.
  """
  if pairs is None:
    return DEFAULT_RULES
  rules = []
  seen = set()
  for i, pair in enumerate(pairs):
    if not isinstance(pair, (list, tuple)) or len(pair) != 2:
      raise ValueError(
          f"{field}[{i}]={pair!r}: expected a (logical_axis, mesh_axes) pair.")
    logical, mesh_axes = pair
    if logical not in LOGICAL_AXES:
      raise ValueError(
          f"{field}[{i}]: unknown logical axis {logical!r}; known: "
          f"{', '.join(LOGICAL_AXES)}.")
    if logical in seen:
      raise ValueError(f"{field}[{i}]: logical axis {logical!r} appears twice.")
    seen.add(logical)
    if isinstance(mesh_axes, (list, tuple)):
      mesh_axes = tuple(mesh_axes)
      names = mesh_axes
    elif mesh_axes is None:
      names = ()
    else:
      names = (mesh_axes,)
    for a in names:
      if a not in MESH_AXES:
        raise ValueError(
            f"{field}[{i}]: unknown mesh axis {a!r} for {logical!r}; known: "
            f"{', '.join(MESH_AXES)}.")
    rules.append((logical, mesh_axes))
  return tuple(rules)
