"""TPU slices by the names users rent them under, as the TPU compiler's devices.

  parse("v4-32")          -> 16 v4 chips (a v4/v5p name counts TensorCores, two a chip)
  parse("v5litepod-16")   -> 16 v5e chips (v5e-16 is the same; v5e/v6e names count chips)
  parse("2xv5e-16")       -> two v5e-16 slices joined over the data-center network
  devices(parse("v5e-8")) -> the 8 devices of jax.experimental.topologies, with
                             no TPU present (needs libtpu: make install ACCEL=tpu)

A mesh built on those devices lays out exactly as on the real slice, so a program
compiled for them has the slice's per-chip memory and collectives.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Generation:
  compiler_name: str       # the topology prefix libtpu knows ('v5' is v5p)
  hbm_bytes: int           # per chip (peak FLOPs: flops.peak_flops_per_device)
  cores_per_chip: int      # how the slice name counts: TensorCores (v4, v5p) or chips
  chip_config: str | None  # v4 runs its two TensorCores as one device ("megacore")
  host_chips: tuple[int, int, int]  # chips per host of a multi-host slice
  single_host_max: int     # up to this many chips, one host holds the slice


GENERATIONS = {
    "v4": Generation("v4", 32 * GIB, 2, "megacore", (2, 2, 1), 4),
    "v5p": Generation("v5", 95 * GIB, 2, None, (2, 2, 1), 4),
    "v5e": Generation("v5e", 16 * GIB, 1, None, (2, 2, 1), 8),
    "v6e": Generation("v6e", 32 * GIB, 1, None, (2, 2, 1), 8),
}
_ALIASES = {"v5litepod": "v5e", "v6litepod": "v6e", "v5lite": "v5e"}
# Chips -> torus shape. v4/v5p slices are 3D, v5e/v6e slices 2D (a trailing 1).
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
              128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
              2048: (8, 16, 16), 4096: (16, 16, 16)}
_SHAPES_2D = {1: (1, 1, 1), 4: (2, 2, 1), 8: (2, 4, 1), 16: (4, 4, 1), 32: (4, 8, 1),
              64: (8, 8, 1), 128: (8, 16, 1), 256: (16, 16, 1)}
_NAME = re.compile(r"^(?:(?P<slices>\d+)x)?(?P<gen>[a-z0-9]+?)-(?P<size>\d+)$")


@dataclasses.dataclass(frozen=True)
class Slice:
  name: str         # as given: 'v4-32', '2xv5e-16'
  generation: str   # 'v4', 'v5p', 'v5e', 'v6e'
  chips: int        # per slice
  num_slices: int
  shape: tuple[int, int, int]

  @property
  def gen(self) -> Generation:
    return GENERATIONS[self.generation]

  @property
  def total_chips(self) -> int:
    return self.chips * self.num_slices

  @property
  def hbm_bytes(self) -> int:
    return self.gen.hbm_bytes

  @property
  def compiler_topology(self) -> str:
    dims = self.shape if self.gen.cores_per_chip == 2 else self.shape[:2]
    return f"{self.gen.compiler_name}:" + "x".join(map(str, dims))

  @property
  def hosts(self) -> int:
    return max(1, self.chips // math.prod(self._host_bounds())) * self.num_slices

  def _host_bounds(self) -> tuple[int, int, int]:
    if self.chips <= self.gen.single_host_max:
      return self.shape
    return self.gen.host_chips


def known_names() -> str:
  out = []
  for gen, g in GENERATIONS.items():
    shapes = _SHAPES_3D if g.cores_per_chip == 2 else _SHAPES_2D
    sizes = [str(c * g.cores_per_chip) for c in shapes]
    out.append(f"{gen}-{{{','.join(sizes)}}}")
  return ("; ".join(out) + " (v5litepod-N = v5e-N; a NxSLICE prefix, e.g. 2xv5e-16, "
          "joins N slices over the data-center network)")


def parse(name: str) -> Slice:
  """'v4-32', 'v5litepod-16', 'v6e-8', '2xv5p-128' -> Slice; ValueError listing the known."""
  m = _NAME.match(name.strip().lower())
  gen = _ALIASES.get(m.group("gen"), m.group("gen")) if m else None
  if gen not in GENERATIONS:
    raise ValueError(f"--topology={name!r}: unknown TPU slice; known: {known_names()}")
  g = GENERATIONS[gen]
  size, slices = int(m.group("size")), int(m.group("slices") or 1)
  shapes = _SHAPES_3D if g.cores_per_chip == 2 else _SHAPES_2D
  chips = size // g.cores_per_chip
  if size % g.cores_per_chip or chips not in shapes or slices < 1:
    raise ValueError(f"--topology={name!r}: {gen} slices come in sizes "
                     f"{', '.join(f'{gen}-{c * g.cores_per_chip}' for c in shapes)}"
                     + (" (a v4/v5p name counts TensorCores: two per chip)"
                        if g.cores_per_chip == 2 else ""))
  return Slice(name, gen, chips, slices, shapes[chips])


def devices(s: Slice) -> list:
  """The slice's devices from the TPU compiler (libtpu), in the order jax lists them."""
  try:
    from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
    import libtpu  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    raise ValueError(f"--topology={s.name}: compiling for a TPU needs libtpu; install it "
                     "with: make install ACCEL=tpu (pip install -r requirements-tpu.txt)") from None
  # libtpu guards a TPU against a second process with a lock file; compiling uses no TPU,
  # and the compile main runs each step kind in a process of its own beside this one.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if "TPU_ACCELERATOR_TYPE" not in os.environ:  # not a TPU VM: no metadata server to ask
    # Without these libtpu looks up the VM's accelerator and workers and prints errors
    # when there are none; the slice compiled for is get_topology_desc's, not these.
    os.environ.update(TPU_SKIP_MDS_QUERY="1", TPU_WORKER_HOSTNAMES="localhost",
                      TPU_ACCELERATOR_TYPE="v5litepod-4")
  kwargs = {"chips_per_host_bounds": s._host_bounds()}  # pylint: disable=protected-access
  if s.gen.chip_config:
    kwargs["chip_config_name"] = s.gen.chip_config
  if s.num_slices > 1:
    kwargs["num_slices"] = s.num_slices
  topology = topologies.get_topology_desc(topology_name=s.compiler_topology, platform="tpu",
                                          **kwargs)
  return list(topology.devices)
