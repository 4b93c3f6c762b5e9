"""Which rows of the global batch each process reads, and how they reach the devices.

The global batch [B, ...] is split along rows over the mesh axes
('data', 'fsdp'); `tensor` (or any axis that spans processes) replicates rows.
A process must supply exactly the rows its own devices hold, wherever the mesh
puts them: not "a contiguous block in process order", which holds only when the
mesh lists devices in process order (mesh_utils does not promise that on TPUs)
and breaks when a model axis spans processes.

So the host side works in global row numbers:
  * `plan(mesh, B, V)`: the batch is V virtual input shards of B / V rows;
    process p reads every shard that overlaps a row one of its devices holds,
    and writes the checkpoint state of those shards no lower process reads.
  * `assemble(take, B, mesh)`: builds each global array from
    `take(rows: slice) -> {key: np.ndarray}` called per distinct row range of
    this process's devices, so every device gets its own rows and processes
    that share rows put identical values in them. `from_global` does this
    for a batch that every process holds whole (fine-tuning).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Mapping

import jax
import numpy as np
from jax.sharding import Mesh

from tokendrop_jax.training import sharding

Take = Callable[[slice], Mapping[str, np.ndarray]]


def _row_slice(index, size: int) -> slice:
  start, stop, _ = index[0].indices(size)
  return slice(start, stop)


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  num_shards: int
  rows_per_shard: int
  shards: tuple[int, ...]  # read by this process, ascending
  owned: tuple[int, ...]   # of those, the ones whose iterator state this process saves

  def take(self, local: Mapping[str, np.ndarray]) -> Take:
    """Global rows -> the same rows of `local` (this process's shards, concatenated)."""
    offset = {v: i * self.rows_per_shard for i, v in enumerate(self.shards)}
    per = self.rows_per_shard

    def take(rows: slice) -> dict[str, np.ndarray]:
      r = np.arange(rows.start, rows.stop)
      pos = np.array([offset[v] for v in r // per], np.int64) + r % per  # KeyError: a bug
      return {k: v[pos] for k, v in local.items()}
    return take


def plan(mesh: Mesh, global_batch: int, num_shards: int, process_index: int | None = None,
         process_of: Callable[[jax.Device], int] = lambda d: d.process_index) -> ShardPlan:
  """The virtual shards process `process_index` (default: this one) reads and owns.

  `process_of` maps a device to its process (tests pretend several processes).
  """
  if num_shards < 1 or global_batch % num_shards:
    raise ValueError(f"data.global_batch_size={global_batch} must divide into "
                     f"data.num_shards={num_shards} virtual input shards")
  me = jax.process_index() if process_index is None else process_index
  per = global_batch // num_shards
  needs: dict[int, set[int]] = {}
  indices = sharding.batch_sharding(mesh).devices_indices_map((global_batch,))
  for device, index in indices.items():
    rows = _row_slice(index, global_batch)
    touched = range(rows.start // per, -(-rows.stop // per))
    needs.setdefault(process_of(device), set()).update(touched)
  if me not in needs:
    raise ValueError(f"process {me} has no device in the mesh {dict(mesh.shape)}")
  shards = tuple(sorted(needs[me]))
  owned = tuple(v for v in shards if min(p for p, s in needs.items() if v in s) == me)
  return ShardPlan(num_shards, per, shards, owned)


def log_plan(p: ShardPlan, mesh: Mesh, global_batch: int) -> None:
  """One line per process; says when a process reads more rows than its devices hold."""
  indices = sharding.batch_sharding(mesh).addressable_devices_indices_map((global_batch,))
  held = {(s.start, s.stop) for s in (_row_slice(i, global_batch) for i in indices.values())}
  held_rows = sum(b - a for a, b in held)
  read_rows = len(p.shards) * p.rows_per_shard
  logging.info("Process %d reads input shards %s of %d (%d rows; its devices hold %d).",
               jax.process_index(), list(p.shards), p.num_shards, read_rows, held_rows)
  if read_rows > held_rows:
    logging.warning(
        "Process %d packs %d rows per step for the %d its devices hold: raise data.num_shards "
        "(now %d) to a multiple of mesh.data*mesh.fsdp so each process reads only its rows.",
        jax.process_index(), read_rows, held_rows, p.num_shards)


def assemble(take: Take, global_batch: int, mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays [global_batch, ...] sharded by rows; each device gets `take(its rows)`."""
  sh = sharding.batch_sharding(mesh)
  indices = sh.addressable_devices_indices_map((global_batch,))
  cache: dict[tuple[int, int], Mapping[str, np.ndarray]] = {}
  per_device = {}
  for device, index in indices.items():
    rows = _row_slice(index, global_batch)
    key = (rows.start, rows.stop)
    if key not in cache:
      cache[key] = take(rows)
    per_device[device] = cache[key]
  first = next(iter(cache.values()))
  out = {}
  for k in first:
    shape = (global_batch,) + first[k].shape[1:]
    out[k] = jax.make_array_from_single_device_arrays(
        shape, sh, [jax.device_put(per_device[d][k], d) for d in indices])
  return out


def from_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Global arrays from a batch every process holds in full (GLUE, tests)."""
  size = len(next(iter(batch.values())))
  return assemble(lambda rows: {k: np.asarray(v)[rows] for k, v in batch.items()}, size, mesh)


def assemble_local(local: Mapping[str, np.ndarray], p: ShardPlan, mesh: Mesh,
                   ) -> dict[str, jax.Array]:
  """Global batch from this process's shards' rows (a `ShardedIterator` batch)."""
  return assemble(p.take(local), p.num_shards * p.rows_per_shard, mesh)
