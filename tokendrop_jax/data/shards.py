"""Several virtual input shards read as one iterator, with one state per shard.

The global batch is cut into `num_shards` virtual shards, each a deterministic
pipeline with its own iterator state (`pipeline.make_pretrain_iterator(...,
shard_index=v, num_shards=V)`). A process reads the shards that its devices
hold rows of (`training/host_rows.py` decides which) and this iterator yields
their batches concatenated in shard order. Because the state is kept per
shard, not per process, a checkpoint can be continued by any number of
processes.
"""
from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

Batch = dict[str, np.ndarray]


class ShardedIterator:
  """Batches of `shards` (ascending) concatenated: [len(shards) * rows_per_shard, ...]."""

  def __init__(self, iterators: Mapping[int, Iterator[Batch]], num_shards: int,
               owned: tuple[int, ...] = ()):
    if not iterators or not all(0 <= v < num_shards for v in iterators):
      raise ValueError(f"shards {sorted(iterators)} not in [0, num_shards={num_shards})")
    self.num_shards = num_shards
    self.shards = tuple(sorted(iterators))
    self.owned = tuple(owned)  # the shards whose state this process writes to checkpoints
    self._its = dict(iterators)

  def __iter__(self) -> "ShardedIterator":
    return self

  def __next__(self) -> Batch:
    parts = [next(self._its[v]) for v in self.shards]
    if len(parts) == 1:
      return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self) -> dict[str, Any]:
    return {"num_shards": self.num_shards,
            "shards": {str(v): self._its[v].get_state() for v in self.shards}}

  def set_state(self, state: Mapping[str, Any]) -> None:
    if int(state["num_shards"]) != self.num_shards:
      raise ValueError(f"the iterator state has {state['num_shards']} shards, this iterator "
                       f"{self.num_shards} (data.num_shards)")
    missing = [v for v in self.shards if str(v) not in state["shards"]]
    if missing:
      raise ValueError(f"the iterator state lacks shards {missing}")
    for v in self.shards:
      self._its[v].set_state(state["shards"][str(v)])

  def shard_state(self, v: int) -> Any:
    return self._its[v].get_state()

  def set_shard_state(self, v: int, state: Any) -> None:
    self._its[v].set_state(state)

  def start_prefetch(self) -> None:
    """Lets grain's prefetching iterators start filling again after a restore."""
    for it in self._its.values():
      getattr(it, "start_prefetch", lambda: None)()
