"""The data position in a checkpoint: one JSON file per virtual input shard.

    <step>/data/shard_<v>-of-<V>.json    the iterator state of shard v

Each shard's state is written once, by the lowest process that reads it
(`host_rows.plan`), and read back by every process that reads it now, so a run
written by 2 processes continues on 1 (or 4) exactly. A checkpoint saved for
another number of shards would give other batches: it is refused naming
`data.num_shards`. Checkpoints from before virtual shards hold
`process_<i>-of-<n>.json` (grain's per-process files): one written by a single
process is shard 0 of 1 and restores; others are refused with the reason.
"""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Optional

import orbax.checkpoint as ocp
from etils import epath

from tokendrop_jax.data.shards import ShardedIterator

_SHARD = re.compile(r"shard_(\d+)-of-(\d+)\.json$")
_LEGACY = re.compile(r"process_(\d+)-of-(\d+)\.json$")


def shard_file(directory: epath.Path, v: int, num_shards: int) -> epath.Path:
  return directory / f"shard_{v}-of-{num_shards}.json"


def check_layout(directory, it: ShardedIterator, where: str) -> None:
  """ValueError naming the field if the saved position cannot be continued by `it`."""
  directory = epath.Path(directory)
  names = [p.name for p in directory.iterdir()] if directory.exists() else []
  saved = {int(m.group(2)) for m in map(_SHARD.match, names) if m}
  legacy = {int(m.group(2)) for m in map(_LEGACY.match, names) if m}
  if saved and saved != {it.num_shards}:
    raise ValueError(
        f"{where} saved its data position for data.num_shards={sorted(saved)[0]}, but the "
        f"config has data.num_shards={it.num_shards}, which would give other batches; set "
        f"--config.data.num_shards={sorted(saved)[0]} to continue this run")
  if not saved and legacy and not (legacy == {1} and it.num_shards == 1):
    n = sorted(legacy)[0]
    raise ValueError(
        f"{where} was written by {n} process(es) before input shards were virtual (its data "
        f"position is per process), and this run reads data.num_shards={it.num_shards} "
        f"shards: the position cannot be carried over. Continue it with data.num_shards=1 "
        f"on 1 process, or move {directory} away to restart the data from its beginning")


class ShardStateHandler(ocp.CheckpointHandler):
  """Orbax handler for a `ShardedIterator`: per-shard files (see module doc)."""

  def save(self, directory: epath.Path, args: "ShardStateSave") -> None:
    it = args.item
    for v in it.owned:
      shard_file(directory, v, it.num_shards).write_text(json.dumps(it.shard_state(v)))

  def restore(self, directory: epath.Path, args: "ShardStateRestore") -> ShardedIterator:
    it = args.item
    for v in it.shards:
      path = shard_file(directory, v, it.num_shards)
      if not path.exists() and it.num_shards == 1:
        path = directory / "process_0-of-1.json"  # before virtual shards: the same stream
      if not path.exists():
        raise FileNotFoundError(f"{path} is missing")
      it.set_shard_state(v, json.loads(path.read_text()))
    it.start_prefetch()
    return it

  def metadata(self, directory: epath.Path) -> Optional[Any]:
    del directory
    return None

  def finalize(self, directory: epath.Path) -> None:
    pass

  def close(self) -> None:
    pass


@ocp.args.register_with_handler(ShardStateHandler, for_save=True)
@dataclasses.dataclass
class ShardStateSave(ocp.args.CheckpointArgs):
  item: ShardedIterator


@ocp.args.register_with_handler(ShardStateHandler, for_restore=True)
@dataclasses.dataclass
class ShardStateRestore(ocp.args.CheckpointArgs):
  item: ShardedIterator
