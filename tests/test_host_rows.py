"""Each process supplies exactly the rows its devices hold, on any mesh and device order."""
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from tokendrop_jax.data.shards import ShardedIterator
from tokendrop_jax.training import host_rows, sharding

B = 16
GLOBAL = {"ids": np.arange(B * 3, dtype=np.int32).reshape(B, 3),
          "w": np.linspace(0, 1, B, dtype=np.float32)}


def two_processes(device):  # pretend devices 0-3 are process 0 and 4-7 process 1
  return device.id // 4


def _local(plan):
  """What `ShardedIterator` yields for `plan`: its shards' rows, concatenated."""
  per = plan.rows_per_shard
  return {k: np.concatenate([v[s * per:(s + 1) * per] for s in plan.shards])
          for k, v in GLOBAL.items()}


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (1, 1, 8), (2, 1, 4), (1, 2, 4)])
@pytest.mark.parametrize("num_shards", [1, 2, 8, 16])
def test_every_process_holds_the_global_rows_of_its_devices(shape, num_shards):
  mesh = sharding.make_mesh(*shape)
  indices = sharding.batch_sharding(mesh).devices_indices_map((B,))
  owners = {}
  for p in (0, 1):
    plan = host_rows.plan(mesh, B, num_shards, process_index=p, process_of=two_processes)
    take = plan.take(_local(plan))
    for device, index in indices.items():
      if two_processes(device) == p:  # rows of this device come from this process's shards
        got = take(slice(*index[0].indices(B)[:2]))
        np.testing.assert_array_equal(got["ids"], GLOBAL["ids"][index[0]])
    for v in plan.owned:
      assert v not in owners, (v, owners)
      owners[v] = p
  # Every shard read by someone has exactly one writer of its state.
  read = set()
  for p in (0, 1):
    read |= set(host_rows.plan(mesh, B, num_shards, p, two_processes).shards)
  assert set(owners) == read == set(range(num_shards))


def test_a_model_axis_across_processes_makes_both_read_the_same_shards():
  mesh = sharding.make_mesh(1, 1, 8)  # tensor=8: every device holds every row
  plans = [host_rows.plan(mesh, B, 4, p, two_processes) for p in (0, 1)]
  assert plans[0].shards == plans[1].shards == (0, 1, 2, 3)
  assert plans[0].owned == (0, 1, 2, 3) and plans[1].owned == ()


def test_data_parallel_processes_read_disjoint_shards():
  mesh = sharding.make_mesh(8, 1, 1)
  plans = [host_rows.plan(mesh, B, 8, p, two_processes) for p in (0, 1)]
  assert plans[0].shards == (0, 1, 2, 3) and plans[1].shards == (4, 5, 6, 7)
  assert plans[0].owned == plans[0].shards and plans[1].owned == plans[1].shards


@pytest.mark.parametrize("permute", [False, True])
def test_assembled_batch_is_the_global_batch_in_row_order(permute):
  devices = jax.devices()
  if permute:  # a mesh that does not list devices in id (process) order
    devices = [devices[i] for i in (5, 2, 7, 0, 3, 6, 1, 4)]
  mesh = sharding.make_mesh(2, 2, 2, devices=devices)
  plan = host_rows.plan(mesh, B, 4)
  assert plan.shards == plan.owned == (0, 1, 2, 3)
  batch = host_rows.assemble_local(_local(plan), plan, mesh)
  assert batch["ids"].sharding.spec == P(("data", "fsdp"))
  assert batch["ids"].addressable_shards[0].data.shape == (4, 3)
  np.testing.assert_array_equal(np.asarray(batch["ids"]), GLOBAL["ids"])
  np.testing.assert_array_equal(np.asarray(host_rows.from_global(GLOBAL, mesh)["w"]), GLOBAL["w"])


def test_a_batch_that_does_not_split_into_the_shards_is_refused_by_name():
  with pytest.raises(ValueError, match=r"data.global_batch_size=16 .* data.num_shards=3"):
    host_rows.plan(sharding.make_mesh(8, 1, 1), B, 3)


def test_sharded_iterator_concatenates_in_shard_order_and_keeps_state_per_shard():
  class Counter:
    def __init__(self, v):
      self.v, self.i = v, 0

    def __next__(self):
      self.i += 1
      return {"x": np.full((2,), 10 * self.v + self.i)}

    def get_state(self):
      return {"i": self.i}

    def set_state(self, s):
      self.i = s["i"]

  it = ShardedIterator({3: Counter(3), 1: Counter(1)}, num_shards=4, owned=(1,))
  np.testing.assert_array_equal(next(it)["x"], [11, 11, 31, 31])
  state = it.get_state()
  assert state == {"num_shards": 4, "shards": {"1": {"i": 1}, "3": {"i": 1}}}
  np.testing.assert_array_equal(next(it)["x"], [12, 12, 32, 32])
  it.set_state(state)
  np.testing.assert_array_equal(next(it)["x"], [12, 12, 32, 32])
  with pytest.raises(ValueError, match="data.num_shards"):
    it.set_state({**state, "num_shards": 2})
