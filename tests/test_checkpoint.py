"""Checkpoints: exact round trip, data-iterator resume, other meshes, corrupt
steps, incompatible configs, params export, and the preemption guard."""
import hashlib
import logging
import os
import signal

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from tokendrop_jax.data.shards import ShardedIterator
from tokendrop_jax.training import checkpoint as ckpt_lib
from tokendrop_jax.training import sharding
from tokendrop_jax.training.preemption import PreemptionGuard


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict
  opt_state: optax.OptState
  importance: jax.Array


_SPECS = {"emb": P("tensor", "fsdp"), "kernel": P("fsdp", "tensor"),
          "bias": P()}


def _make_state(mesh, hidden=8, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  params = {"emb": jax.random.normal(k1, (16, hidden)),
            "kernel": jax.random.normal(k2, (hidden, 32)),
            "bias": jax.random.normal(k3, (32,))}
  params = {k: jax.device_put(v, NamedSharding(mesh, _SPECS[k]))
            for k, v in params.items()}
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3))
  opt_state = tx.init(params)
  # Make moments non-trivial so a mix-up would show.
  _, opt_state = tx.update(params, opt_state, params)
  return _State(step=jnp.int32(7), params=params, opt_state=opt_state,
                importance=jnp.linspace(0.0, 1.0, 16))


def _abstract(state, mesh):
  """Target shardings on `mesh`: params by _SPECS, everything else replicated."""
  def leaf(path, x):
    name = getattr(path[-1], "key", getattr(path[-1], "name", None))
    spec = _SPECS.get(name, P()) if x.ndim else P()
    return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                sharding=NamedSharding(mesh, spec))
  return jax.tree_util.tree_map_with_path(leaf, state)


def _assert_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert jax.tree.structure(a) == jax.tree.structure(b)


def _data_iter():
  it = iter(grain.MapDataset.range(100).shuffle(seed=0).batch(4).to_iter_dataset())
  return ShardedIterator({0: it}, num_shards=1, owned=(0,))


def _dir_digest(root):
  out = {}
  for d, _, files in os.walk(root):
    out[d] = None
    for f in files:
      p = os.path.join(d, f)
      with open(p, "rb") as fh:
        out[p] = hashlib.sha1(fh.read()).hexdigest()
  return out


@pytest.fixture(scope="module")
def mesh8():
  return sharding.make_mesh(2, 2, 2)


def test_round_trip_exact_with_data_iterator(tmp_path, mesh8):
  state = _make_state(mesh8)
  it = _data_iter()
  for _ in range(3):
    next(it)
  ck = ckpt_lib.Checkpointer(tmp_path / "checkpoints", save_every=1, keep=3)
  assert ck.save(3, state, it)
  expected_next = next(it)  # Batch 4 of the uninterrupted run.
  ck.wait()
  assert os.path.isdir(tmp_path / "checkpoints" / "3" / "state")
  ck.close()

  ck = ckpt_lib.Checkpointer(tmp_path / "checkpoints", save_every=1, keep=3)
  assert ck.latest_step() == 3
  fresh = _data_iter()
  restored, step = ck.restore(_abstract(state, mesh8), fresh)
  assert step == 3
  _assert_equal(restored, state)
  assert restored.params["kernel"].sharding.spec == P("fsdp", "tensor")
  np.testing.assert_array_equal(next(fresh), expected_next)
  ck.close()


def _sharded_iter(shards, num_shards, owned):
  """Shard v: its own stream (every num_shards-th item from v), batches of 2."""
  return ShardedIterator(
      {v: iter(grain.MapDataset.range(100)[v::num_shards].batch(2).map(lambda x: {"x": x})
               .to_iter_dataset()) for v in shards}, num_shards, owned)


def test_data_position_is_per_shard_so_another_split_of_the_shards_continues_it(tmp_path, mesh8):
  """Written as two 'processes' (shards 0-1 and 2-3), continued by one reading all four."""
  state = _make_state(mesh8)
  ck = ckpt_lib.Checkpointer(tmp_path, save_every=1, keep=1, async_save=False)
  first, second = _sharded_iter((0, 1), 4, (0, 1)), _sharded_iter((2, 3), 4, (2, 3))
  for _ in range(3):
    next(first), next(second)
  ck.save(3, state, first)  # what process 0 writes ...
  ck.close()
  ck = ckpt_lib.Checkpointer(tmp_path, save_every=1, keep=1, async_save=False)
  for v in (2, 3):  # ... and process 1 (the same handler, called on its own process)
    (tmp_path / "3" / "data" / f"shard_{v}-of-4.json").write_text(
        __import__("json").dumps(second.shard_state(v)))
  whole = _sharded_iter((0, 1, 2, 3), 4, (0, 1, 2, 3))
  ck.restore(_abstract(state, mesh8), whole)
  np.testing.assert_array_equal(next(whole)["x"], np.concatenate([next(first)["x"],
                                                                 next(second)["x"]]))
  ck.close()


def test_a_data_position_for_other_shards_is_refused_naming_the_field(tmp_path, mesh8):
  state = _make_state(mesh8)
  ck = ckpt_lib.Checkpointer(tmp_path, save_every=1, keep=1, async_save=False)
  ck.save(2, state, _sharded_iter((0, 1), 2, (0, 1)))
  before = _dir_digest(tmp_path)
  with pytest.raises(ValueError, match=r"data.num_shards=2, but the config has "
                                       r"data.num_shards=4.*--config.data.num_shards=2"):
    ck.restore(_abstract(state, mesh8), _sharded_iter((0, 1, 2, 3), 4, ()))
  assert _dir_digest(tmp_path) == before
  ck.close()


def test_a_checkpoint_from_before_virtual_shards(tmp_path, mesh8):
  """grain's per-process file: one process's restores as shard 0 of 1; two processes' are
  refused with the reason, changing nothing."""
  state = _make_state(mesh8)
  ck = ckpt_lib.Checkpointer(tmp_path, save_every=1, keep=2, async_save=False)
  for step in (2, 4):
    it = _sharded_iter((0,), 1, (0,))
    for _ in range(step):
      next(it)
    ck.save(step, state, it)
  expected = next(it)
  ck.close()
  data = tmp_path / "4" / "data"
  (data / "shard_0-of-1.json").rename(data / "process_0-of-1.json")
  ck = ckpt_lib.Checkpointer(tmp_path, save_every=1, keep=2, async_save=False)
  fresh = _sharded_iter((0,), 1, (0,))
  assert ck.restore(_abstract(state, mesh8), fresh)[1] == 4
  np.testing.assert_array_equal(next(fresh)["x"], expected["x"])
  (data / "process_0-of-1.json").rename(data / "process_1-of-2.json")
  before = _dir_digest(tmp_path)
  with pytest.raises(ValueError, match="written by 2 process.*before input shards were virtual"):
    ck.restore(_abstract(state, mesh8), _sharded_iter((0,), 1, (0,)))
  assert _dir_digest(tmp_path) == before
  ck.close()


def test_restore_on_fewer_devices(tmp_path, mesh8):
  state = _make_state(mesh8)
  ck = ckpt_lib.Checkpointer(tmp_path, save_every=1, keep=1, async_save=False)
  ck.save(5, state)
  for n, shape in ((4, (1, 2, 2)), (1, (1, 1, 1))):
    mesh = sharding.make_mesh(*shape, devices=jax.devices()[:n])
    restored, step = ck.restore(_abstract(state, mesh))
    assert step == 5
    _assert_equal(restored, state)
    kernel = restored.params["kernel"]
    assert len(kernel.sharding.device_set) == n
  ck.close()


def test_save_every_keep_and_force(tmp_path, mesh8):
  state = _make_state(mesh8)
  ck = ckpt_lib.Checkpointer(tmp_path, save_every=2, keep=2, async_save=False)
  saved = [ck.save(s, state) for s in range(1, 7)]
  assert saved == [False, True, False, True, False, True]
  assert ck.save(7, state, force=True)
  assert not ck.save(7, state, force=True)  # Already there: no error.
  assert ck.all_steps() == [6, 7]
  ck.close()


def _flip_bytes(step_dir):
  n = 0
  for d, _, files in os.walk(os.path.join(step_dir, "state")):
    if os.path.basename(d) != "d":  # Array data files.
      continue
    for f in files:
      p = os.path.join(d, f)
      data = bytearray(open(p, "rb").read())
      for i in range(len(data) // 4, len(data), 97):  # Scattered damage.
        data[i] ^= 0x5A
      open(p, "wb").write(bytes(data))
      n += 1
  assert n


def _remove_arrays(step_dir):
  import shutil
  for d, _, _ in list(os.walk(os.path.join(step_dir, "state"))):
    if os.path.basename(d) == "d" and os.path.isdir(d):
      shutil.rmtree(d)


@pytest.mark.parametrize("damage", [_flip_bytes, _remove_arrays])
# A failed tensorstore read leaves an orbax callback on a closed event loop.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_latest_falls_back(tmp_path, mesh8, caplog, damage):
  good = _make_state(mesh8, seed=1)
  newer = _make_state(mesh8, seed=2)
  ck = ckpt_lib.Checkpointer(tmp_path, save_every=1, keep=5, async_save=False)
  ck.save(2, good)
  ck.save(4, newer)
  damage(str(tmp_path / "4"))
  with caplog.at_level(logging.WARNING):
    restored, step = ck.restore(_abstract(good, mesh8))
  assert step == 2
  _assert_equal(restored, good)
  text = caplog.text
  assert "unreadable or corrupt" in text and "Fell back to checkpoint step 2" in text
  assert os.path.isdir(tmp_path / "4.corrupt")
  assert ck.latest_step() == 2
  assert ck.save(4, newer)  # Training can save that step again.
  ck.close()


def test_incompatible_config_refuses_and_changes_nothing(tmp_path, mesh8):
  ck = ckpt_lib.Checkpointer(tmp_path / "checkpoints", save_every=1, keep=2,
                             async_save=False)
  ck.save(1, _make_state(mesh8, hidden=8))
  ck.close()
  before = _dir_digest(tmp_path)
  other = _make_state(mesh8, hidden=16)  # Another model size.
  ck = ckpt_lib.Checkpointer(tmp_path / "checkpoints", save_every=1, keep=2)
  with pytest.raises(ValueError) as err:
    ck.restore(_abstract(other, mesh8))
  msg = str(err.value)
  assert "incompatible config" in msg and str(tmp_path / "checkpoints") in msg
  assert "params/emb" in msg and "(16, 8)" in msg and "(16, 16)" in msg
  ck.close()
  assert _dir_digest(tmp_path) == before


def test_params_export(tmp_path, mesh8):
  params = _make_state(mesh8).params
  path = tmp_path / "export" / "params"
  ckpt_lib.save_params(path, params)
  with pytest.raises(FileExistsError):
    ckpt_lib.save_params(path, params)
  ckpt_lib.save_params(path, params, overwrite=True)
  loaded = ckpt_lib.load_params(path)
  _assert_equal(loaded, params)
  mesh4 = sharding.make_mesh(4, 1, 1, devices=jax.devices()[:4])
  abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                      sharding=NamedSharding(mesh4, P()))
              for k, v in params.items()}
  _assert_equal(ckpt_lib.load_params(path, abstract), params)
  abstract["bias"] = jax.ShapeDtypeStruct((33,), jnp.float32)
  with pytest.raises(ValueError, match="bias"):
    ckpt_lib.load_params(path, abstract)


def test_fingerprint_sees_single_bit_and_swaps():
  x = jnp.arange(12, dtype=jnp.float32).reshape(3, 4)
  base = ckpt_lib.fingerprint({"x": x})["x"][0]
  flipped = x.at[1, 2].set(jax.lax.bitcast_convert_type(
      jax.lax.bitcast_convert_type(x[1, 2], jnp.uint32) ^ jnp.uint32(1),
      jnp.float32))
  swapped = x.at[0, 0].set(x[0, 1]).at[0, 1].set(x[0, 0])
  assert ckpt_lib.fingerprint({"x": flipped})["x"][0] != base
  assert ckpt_lib.fingerprint({"x": swapped})["x"][0] != base
  assert ckpt_lib.fingerprint({"k": jax.random.key(0),
                               "h": jnp.ones(3, jnp.bfloat16)})


def test_fingerprint_checks_a_leaf_restored_in_another_dtype(caplog):
  """Saved bf16, restored f32: checked in bf16 (the cast back is exact), so a corrupt
  value is caught; restored narrower (f32 -> bf16): not checkable, and said so."""
  from tokendrop_jax.training import fingerprint  # pylint: disable=import-outside-toplevel
  saved = {"h": jnp.linspace(-2, 2, 24, dtype=jnp.bfloat16).reshape(4, 6),
           "w": jnp.linspace(-1, 1, 6, dtype=jnp.float32)}
  expected = fingerprint.fingerprint(saved)
  widened = {"h": saved["h"].astype(jnp.float32), "w": saved["w"]}
  fingerprint.verify(widened, expected, "ckpt")
  corrupt = {"h": widened["h"].at[2, 3].add(0.5), "w": saved["w"]}
  with pytest.raises(IOError, match="ckpt: h does not match the fingerprint"):
    fingerprint.verify(corrupt, expected, "ckpt")
  narrowed = {"h": saved["h"], "w": saved["w"].astype(jnp.bfloat16)}
  with caplog.at_level(logging.WARNING):
    fingerprint.verify(narrowed, expected, "ckpt")
  assert "w was saved as float32 and restored as bfloat16" in caplog.text
  fingerprint.verify({"w": saved["w"]}, expected, "ckpt")  # a partial restore: w alone


def test_preemption_guard_sigterm():
  previous = signal.getsignal(signal.SIGTERM)
  with PreemptionGuard() as guard:
    assert not guard.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.stop_requested
    assert guard.should_stop(2)
    assert guard.received == signal.SIGTERM
  assert signal.getsignal(signal.SIGTERM) is previous


_WORKER = r'''
import os, sys, json
import jax
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_platforms", "cpu")
import numpy as np
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from tokendrop_jax.training import sharding, checkpoint, host_rows
from tokendrop_jax.training.preemption import PreemptionGuard

assert sharding.maybe_initialize_distributed()
pid = jax.process_index()
mesh = sharding.make_mesh(-1, 1, 1)
assert mesh.devices.size == 8
batch = host_rows.from_global(
    {"x": np.repeat(np.arange(8, dtype=np.float32)[:, None], 2, 1)}, mesh)
total = float(jax.jit(jnp.sum)(batch["x"]))
with PreemptionGuard(sync_every=2) as guard:
  stopped = None
  for step in range(1, 11):
    if pid == 1 and step == 3:
      guard.request_stop()
    if guard.should_stop(step):
      stopped = step
      break
w = jax.device_put(jnp.arange(32.0).reshape(8, 4), NamedSharding(mesh, P("data")))
state = {"w": w, "step": jax.device_put(jnp.int32(3), sharding.replicated(mesh))}
ck = checkpoint.Checkpointer(sys.argv[1], save_every=1, keep=2)
ck.save(3, state)
ck.wait()
abstract = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
restored, step = ck.restore(abstract)
local = np.asarray(restored["w"].addressable_shards[0].data).tolist()
ck.close()
print("RESULT", json.dumps({"total": total, "stopped": stopped, "step": step,
                            "shard0": local}), flush=True)
'''


def test_two_processes(tmp_path):
  """2 jax processes on CPU: global batch, agreed stop, collective checkpoint."""
  import json
  import socket
  import subprocess
  import sys
  script = tmp_path / "worker.py"
  script.write_text(_WORKER)
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  procs = []
  for pid in range(2):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
               JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(pid))
    procs.append(subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "ckpt")], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  results = []
  for p in procs:
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 0, out[-3000:]
    line = [l for l in out.splitlines() if l.startswith("RESULT")][-1]
    results.append(json.loads(line[len("RESULT "):]))
  for r in results:
    assert r["total"] == 56.0  # rows 0..7, two columns each, whoever holds them
    assert r["stopped"] == 4  # Requested at 3 by one process, agreed at 4.
    assert r["step"] == 3
  assert results[0]["shard0"] == [[0.0, 1.0, 2.0, 3.0]]
  assert results[1]["shard0"] == [[16.0, 17.0, 18.0, 19.0]]


def test_close_after_an_error_logs_a_failed_save_instead_of_raising(tmp_path, monkeypatch, caplog):
  def broken_wait():
    raise OSError("No space left on device")

  for after_error in (False, True):
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / f"c{after_error}"), save_every=1, keep=1)
    monkeypatch.setattr(ckpt._manager, "wait_until_finished", broken_wait)  # pylint: disable=protected-access
    if after_error:
      with caplog.at_level(logging.ERROR):
        ckpt.close(after_error=True)  # the caller's own error stays the one that is raised
      assert "No space left on device" in caplog.text
    else:
      with pytest.raises(ckpt_lib.CheckpointSaveError, match="No space left"):
        ckpt.close()


def test_closing_keeps_the_callers_error_and_closes_the_writers(tmp_path, monkeypatch):
  class Writer:
    closed = 0

    def close(self):
      Writer.closed += 1

  def broken_wait():
    raise OSError("No space left on device")

  for body_fails in (True, False):
    ckpt = ckpt_lib.Checkpointer(str(tmp_path / f"c{body_fails}"), save_every=1, keep=1)
    monkeypatch.setattr(ckpt._manager, "wait_until_finished", broken_wait)  # pylint: disable=protected-access
    Writer.closed = 0
    expected = (KeyboardInterrupt, "stopped by hand") if body_fails else (
        ckpt_lib.CheckpointSaveError, "No space left")
    with pytest.raises(expected[0], match=expected[1]):
      with ckpt_lib.closing(ckpt, Writer(), Writer()):
        if body_fails:
          raise KeyboardInterrupt("stopped by hand")
    assert Writer.closed == 2
