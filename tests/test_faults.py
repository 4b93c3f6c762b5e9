"""Fault injection: every fault is really injected and the run is recovered or stopped clearly.

One tiny reference run (30 steps, a checkpoint every 10) is shared by the
module; the corpus and tokenizer are built once. See docs/reliability.md.
"""
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from absl import flags

from tests.test_config import load
from tokendrop_jax import synthetic
from tokendrop_jax.data import demo_corpus, masking, pipeline
from tokendrop_jax.training import checkpoint, loop, runner

flags.FLAGS.mark_as_parsed()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, EVERY = 30, 10


def fcfg(root, **train):
  """tiny, on a corpus and tokenizer shared by every run of the module."""
  c = load("tiny")
  c.data.update(demo_corpus=False, train_files=str(root / "corpus" / "train.txt"),
                valid_files=str(root / "corpus" / "valid.txt"),
                dataset_dir=str(root / "data"))
  if (root / "tokenizer.model").exists():
    c.data.tokenizer_model = str(root / "tokenizer.model")
  c.train.update(num_steps=STEPS, log_every=1, eval_every=STEPS, checkpoint_every=EVERY,
                 keep_checkpoints=10, async_checkpoint=True)
  c.train.update(**train)
  return c


def cli_args(root, workdir, *extra):
  c = fcfg(root)
  flat = {"data.demo_corpus": False, "data.train_files": c.data.train_files,
          "data.valid_files": c.data.valid_files, "data.dataset_dir": c.data.dataset_dir,
          "data.tokenizer_model": c.data.tokenizer_model}
  flat.update({f"train.{k}": c.train[k] for k in ("num_steps", "log_every", "eval_every",
                                                   "checkpoint_every", "keep_checkpoints")})
  return ["--config=configs/tiny.py", f"--workdir={workdir}",
          *[f"--config.{k}={v}" for k, v in flat.items()], *extra]


def restore(config, workdir, step=None, devices=None):
  run = loop.build(config, synthetic.SPECIAL_IDS, devices=devices)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), save_every=1, keep=0)
  try:
    state, s = ckpt.restore(run.layout.abstract, step=step)
  finally:
    ckpt.close()
  return jax.device_get(state), s


def losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(l) for l in f]
  return {r["step"]: r["loss"] for r in rows if "loss" in r}


def complete_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()
                and os.path.exists(os.path.join(d, n, "_CHECKPOINT_METADATA")))


def assert_same(a, b, exact=True):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    if exact:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    else:
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-5)


def assert_finite(state):
  for x in jax.tree_util.tree_leaves(state.params):
    assert np.isfinite(np.asarray(x)).all()


def copy_run(ref_dir, dst, keep_until):
  """A copy of the reference workdir as if it had stopped at `keep_until`."""
  shutil.copytree(ref_dir, dst)
  for s in complete_steps(dst):
    if s > keep_until:
      shutil.rmtree(os.path.join(dst, "checkpoints", str(s)))
  return str(dst)


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
  root = tmp_path_factory.mktemp("faults")
  demo_corpus.write_demo_corpus(str(root / "corpus"))
  workdir = str(root / "ref")
  loop.train_and_evaluate(fcfg(root), workdir)
  shutil.copyfile(os.path.join(workdir, "tokenizer.model"), root / "tokenizer.model")
  assert complete_steps(workdir) == [10, 20, 30]
  return root, workdir


# 1. SIGTERM while an async save is in flight -------------------------------------------------
def test_sigterm_during_async_save(ref, monkeypatch, capsys):
  root, ref_dir = ref
  workdir = str(root / "sigterm_save")
  save, seen = checkpoint.Checkpointer.save, {}

  def save_then_signal(self, step, *a, **k):
    started = save(self, step, *a, **k)
    if step == 10 and started:
      seen["in_flight"] = self._manager.is_saving_in_progress()  # pylint: disable=protected-access
      os.kill(os.getpid(), signal.SIGTERM)  # arrives while step 10 is being written
    return started

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_signal)
  first = loop.train_and_evaluate(fcfg(root), workdir)
  monkeypatch.undo()
  assert seen == {"in_flight": True}
  assert first["step"] == 11 and complete_steps(workdir) == [10, 11]  # both saves complete
  assert "stopped by signal at step 11" in capsys.readouterr().out
  assert_same(restore(fcfg(root), workdir, step=10)[0], restore(fcfg(root), ref_dir, step=10)[0])
  second = loop.train_and_evaluate(fcfg(root), workdir)
  assert second["step"] == STEPS
  assert_same(restore(fcfg(root), workdir)[0], restore(fcfg(root), ref_dir)[0])
  assert losses(workdir) == losses(ref_dir)


# 2. SIGKILL at several points, one in the middle of a save ------------------------------------
def _wait(pred, proc, timeout=240):
  t0 = time.time()
  while not pred():
    assert proc.poll() is None, f"exited early rc={proc.returncode}: {proc.stdout.read()[-3000:]}"
    assert time.time() - t0 < timeout, "timed out waiting for the kill point"
    time.sleep(0.005)


def _last_logged(workdir):
  try:
    return max(losses(workdir), default=0)
  except (FileNotFoundError, json.JSONDecodeError):
    return 0


def _tmp_dirs(workdir):
  d = os.path.join(workdir, "checkpoints")
  return [n for n in os.listdir(d) if "tmp" in n] if os.path.isdir(d) else []


@pytest.mark.slow
def test_sigkill_loop_restores_complete_checkpoints_and_finishes_exactly(ref, tmp_path):
  root, ref_dir = ref
  workdir = str(tmp_path / "killed")
  env = dict(os.environ, FAULT_SAVE_SLEEP_S="1.5", JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  rng = random.Random(0)
  seen_tmp = []
  kill_points = [
      # mid-save: step 20 is being written (its tmp dir exists), step 10 is complete
      lambda: complete_steps(workdir) == [10] and bool(_tmp_dirs(workdir)) and not seen_tmp.append(
          list(_tmp_dirs(workdir))),
      # a random step (fixed seed) after the restart (metrics.jsonl rewritten by this process)
      lambda n=rng.randint(3, 8): (os.path.getmtime(os.path.join(workdir, "metrics.jsonl"))
                                   > started[0] and _last_logged(workdir) >= 10 + n),
      # just after step 20 was committed
      lambda: 20 in complete_steps(workdir),
  ]
  log, started = [], [0.0]
  for i, point in enumerate(kill_points + [None]):
    started[0] = time.time()
    before = complete_steps(workdir) if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
    proc = subprocess.Popen([sys.executable, "-m", "tests.fault_train", *cli_args(root, workdir)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    if point is None:
      out, _ = proc.communicate(timeout=300)
      assert proc.returncode == 0, out[-3000:]
    else:
      _wait(point, proc)
      last = _last_logged(workdir)
      proc.send_signal(signal.SIGKILL)
      out, _ = proc.communicate()
      log.append((i, last, complete_steps(workdir)))
      # lost steps: never more than one save interval before the last save point reached
      assert max(complete_steps(workdir), default=0) >= (last // EVERY) * EVERY - EVERY
    resumed = re.findall(r"resumed from checkpoint step (\d+)", out)
    if before:
      assert resumed and int(resumed[0]) == max(before), (before, out[-2000:])
    else:
      assert not resumed
  assert seen_tmp and seen_tmp[0], "the first kill did not land during a save"
  assert log[0][2] == [10]  # the partial step-20 save was not taken for a checkpoint
  assert not _tmp_dirs(workdir)  # partial saves are cleaned up at the next start
  assert complete_steps(workdir) == [10, 20, 30]
  assert_same(restore(fcfg(root), workdir)[0], restore(fcfg(root), ref_dir)[0])
  assert losses(workdir) == losses(ref_dir)


# 3. Corrupted / truncated / removed checkpoint files ----------------------------------------
def _array_files(step_dir):
  d = os.path.join(step_dir, "state")
  files = [os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs
           if os.sep + "d" + os.sep in os.path.join(r, f) + os.sep or r.endswith(os.sep + "d")]
  return sorted(files, key=os.path.getsize, reverse=True)


def _corrupt(step_dir, how):
  files = _array_files(step_dir)
  assert files
  if how == "flip":  # flip bytes in the middle of every array file
    for f in files:
      n = os.path.getsize(f)
      with open(f, "r+b") as fh:
        fh.seek(n // 2)
        b = fh.read(16)
        fh.seek(n // 2)
        fh.write(bytes(x ^ 0xFF for x in b))
  elif how == "truncate":
    os.truncate(files[0], os.path.getsize(files[0]) // 2)
  else:  # remove the array files
    for f in files:
      os.remove(f)


@pytest.mark.parametrize("how", ["flip", pytest.param("truncate", marks=pytest.mark.slow),
                                 pytest.param("remove", marks=pytest.mark.slow)])
def test_corrupt_latest_checkpoint_falls_back_and_finishes(ref, tmp_path, how, caplog, capsys):
  root, ref_dir = ref
  workdir = copy_run(ref_dir, tmp_path / "run", keep_until=STEPS)
  _corrupt(os.path.join(workdir, "checkpoints", str(STEPS)), how)
  summary = loop.train_and_evaluate(fcfg(root), workdir)
  assert summary["step"] == STEPS
  text = caplog.text
  assert f"checkpoints/{STEPS} is unreadable or corrupt" in text
  assert f"Fell back to checkpoint step {STEPS - EVERY}" in text
  assert f"resumed from checkpoint step {STEPS - EVERY}" in capsys.readouterr().out
  assert os.path.isdir(os.path.join(workdir, "checkpoints", f"{STEPS}.corrupt"))
  assert_same(restore(fcfg(root), workdir)[0], restore(fcfg(root), ref_dir)[0])


def test_no_readable_checkpoint_exits_6_without_a_traceback(ref, tmp_path):
  """The only checkpoint is corrupt: the main says so (exit 6), names the step and changes
  nothing; the user moves the directory away to start afresh."""
  root, ref_dir = ref
  workdir = copy_run(ref_dir, tmp_path / "run", keep_until=EVERY)
  _corrupt(os.path.join(workdir, "checkpoints", str(EVERY)), "remove")
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  proc = subprocess.run([sys.executable, "-m", "tokendrop_jax.train", *cli_args(root, workdir)],
                        cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 6, proc.stderr[-3000:]
  assert "error: No readable checkpoint in" in proc.stderr and f"step {EVERY}:" in proc.stderr
  assert "Nothing was changed" in proc.stderr
  # No traceback through this package (orbax may still print its event-loop teardown race,
  # the one pyproject.toml's warning filter describes).
  assert not re.search(r'File ".*tokendrop_jax/', proc.stderr), proc.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


# 4. NaN / Inf -------------------------------------------------------------------------------
POISON_STEP = 15  # the step whose batch is poisoned (1-based, as logged)


@pytest.fixture
def poisoned(monkeypatch):
  nxt = pipeline._PackMaskIterator.__next__  # pylint: disable=protected-access

  def poisoned_next(self):
    batch = nxt(self)
    if self._cfg.drop_remainder and self._batch_index == POISON_STEP:  # train stream only
      batch["masked_lm_weights"] = np.full_like(batch["masked_lm_weights"], np.nan)
    return batch

  monkeypatch.setattr(pipeline._PackMaskIterator, "__next__", poisoned_next)  # pylint: disable=protected-access


@pytest.mark.slow
def test_poisoned_batch_stops_within_a_step_and_keeps_good_checkpoint(ref, tmp_path, poisoned):
  root, ref_dir = ref
  workdir = str(tmp_path / "nan")
  with pytest.raises(runner.NonFiniteLossError, match=f"at step {POISON_STEP};.*step 10"):
    loop.train_and_evaluate(fcfg(root), workdir)
  assert complete_steps(workdir) == [10]  # no checkpoint after the NaN
  assert max(losses(workdir)) == POISON_STEP - 1  # nothing logged past the bad step
  state, step = restore(fcfg(root), workdir)
  assert step == 10
  assert_finite(state)
  assert_same(state, restore(fcfg(root), ref_dir, step=10)[0])


@pytest.mark.slow
def test_nan_policy_skip_skips_the_bad_batch_and_finishes(ref, tmp_path, poisoned, capsys):
  root, _ = ref
  workdir = str(tmp_path / "skip")
  summary = loop.train_and_evaluate(fcfg(root, nan_policy="skip"), workdir)
  assert summary["step"] == STEPS and summary["skipped_steps"] == 1
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = {r["step"]: r for r in map(json.loads, f) if "skipped" in r}
  assert [s for s, r in rows.items() if r["skipped"]] == [POISON_STEP]
  assert f"step {POISON_STEP}: non-finite loss/gradient, update skipped" in capsys.readouterr().out
  assert_finite(restore(fcfg(root), workdir)[0])


@pytest.mark.slow
def test_huge_learning_rate_cli_exits_nonzero_naming_the_step(ref, tmp_path):
  root, _ = ref
  workdir = str(tmp_path / "lr")
  proc = subprocess.run(
      [sys.executable, "-m", "tokendrop_jax.train",
       *cli_args(root, workdir, "--config.optim.learning_rate=1e6",
                 "--config.optim.grad_clip_norm=0", "--config.optim.warmup_steps=0")],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(root / "jax_cache")))
  assert proc.returncode == 3, proc.stderr[-3000:]
  m = re.search(r"error: loss is \S+ \(gradient norm \S+\) at step (\d+); stopping", proc.stderr)
  assert m, proc.stderr[-3000:]
  bad = int(m.group(1))
  kept = complete_steps(workdir)
  assert all(s < bad for s in kept)
  if kept:
    assert_finite(restore(fcfg(root), workdir)[0])


# 5. Disk full / read-only workdir while saving ------------------------------------------------
@pytest.fixture
def small_fs(tmp_path):
  mnt = tmp_path / "ckpt_fs"
  mnt.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                    capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs here")
  yield str(mnt)
  subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("fault", ["disk_full", pytest.param("read_only", marks=pytest.mark.slow)])
def test_save_fails_clearly_and_previous_checkpoint_survives(ref, tmp_path, small_fs, fault,
                                                             monkeypatch):
  root, ref_dir = ref
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  os.symlink(small_fs, os.path.join(workdir, "checkpoints"))  # checkpoints on the small fs
  save = checkpoint.Checkpointer.save

  def save_then_break_fs(self, step, *a, **k):
    started = save(self, step, *a, **k)
    if step == 10:
      self.wait()
      if fault == "disk_full":  # fill what is left (the checkpoints may have filled it already)
        try:
          with open(os.path.join(small_fs, "filler"), "wb") as f:
            while True:
              f.write(b"\0" * (1 << 20))
              f.flush()
        except OSError as e:
          assert e.errno == errno.ENOSPC
      else:
        subprocess.run(["mount", "-o", "remount,ro", small_fs], check=True)
    return started

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_break_fs)
  t0 = time.time()
  with pytest.raises(checkpoint.CheckpointSaveError) as e:
    loop.train_and_evaluate(fcfg(root), workdir)
  monkeypatch.undo()
  msg = str(e.value)
  assert time.time() - t0 < 120  # no hang on the async writer
  assert "step 20" in msg and os.path.join(workdir, "checkpoints") in msg
  assert "previous checkpoint (step 10)" in msg and "intact" in msg
  print(msg)
  if fault == "disk_full":
    os.remove(os.path.join(small_fs, "filler"))
  else:
    subprocess.run(["mount", "-o", "remount,rw", small_fs], check=True)
  assert complete_steps(workdir) == [10]
  state, step = restore(fcfg(root), workdir)
  assert step == 10
  assert_same(state, restore(fcfg(root), ref_dir, step=10)[0])


# 6. Changing the machine: 8 devices -> 4 / 1 ------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 4])
def test_run_checkpointed_on_8_devices_continues_on_fewer(ref, tmp_path, n):
  root, ref_dir = ref
  workdir = copy_run(ref_dir, tmp_path / "run", keep_until=STEPS - EVERY)
  config = fcfg(root)
  config.mesh.update(data=-1, fsdp=1, tensor=1)
  summary = loop.train_and_evaluate(config, workdir, devices=jax.devices()[:n])
  assert summary["step"] == STEPS
  state, _ = restore(config, workdir, devices=jax.devices()[:n])
  assert_same(state, restore(fcfg(root), ref_dir)[0], exact=False)
  new, old = losses(workdir), losses(ref_dir)
  np.testing.assert_allclose([new[s] for s in sorted(old)], [old[s] for s in sorted(old)],
                             rtol=1e-5)


# 7. Data faults -----------------------------------------------------------------------------
@pytest.fixture
def dataset_copy(ref, tmp_path):
  root, _ = ref
  (src,) = [os.path.join(root / "data", d) for d in os.listdir(root / "data")
            if d.startswith("corpus-")]
  dst = str(tmp_path / "corpus")
  shutil.copytree(src, dst)
  return dst


def _shard(d):
  return os.path.join(d, "tokendrop_text_corpus-train.array_record-00000-of-00001")


def _read_all(d):
  it = pipeline.make_pretrain_iterator(d, seq_len=64, max_predictions_per_seq=10,
                                       global_batch_size=16, num_epochs=1, shuffle=False)
  return [b["input_ids"].shape for b in it]


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_corrupt_array_record_shard_names_the_file(dataset_copy, how):
  f = _shard(dataset_copy)
  n = os.path.getsize(f)
  if how == "flip":
    with open(f, "r+b") as fh:
      fh.seek(n // 3)
      b = fh.read(4096)
      fh.seek(n // 3)
      fh.write(bytes(x ^ 0xFF for x in b))
  else:
    os.truncate(f, n // 2)
  with pytest.raises(IOError, match=re.escape(f) + ".*corrupt or truncated"):
    _read_all(dataset_copy)


def test_missing_shard_names_the_file(dataset_copy):
  os.remove(_shard(dataset_copy))
  with pytest.raises(FileNotFoundError, match="missing shard.*" + re.escape(_shard(dataset_copy))):
    _read_all(dataset_copy)


def test_empty_and_special_only_documents_are_skipped_with_a_count(caplog):
  special = masking.SpecialIds(vocab_size=100, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4)
  rng = np.random.default_rng(0)

  def doc(ids, lengths):
    return {"ids": np.asarray(ids, np.int32), "sentence_lengths": np.asarray(lengths, np.int32)}

  good = [doc(rng.integers(5, 100, 30), [10, 20]) for _ in range(40)]
  bad = [doc([], []), doc([1, 2, 3, 4, 1, 1], [2, 4])]  # zero-length; only special tokens
  mixed = good[:10] + bad[:1] + good[10:25] + bad[1:] + good[25:]

  def batches(docs):
    it = pipeline.make_pretrain_iterator(docs, tokenizer=special, seq_len=32,
                                         max_predictions_per_seq=5, global_batch_size=4,
                                         num_epochs=1, shuffle=False)
    return list(it), it

  clean, _ = batches(good)
  got, it = batches(mixed)
  assert len(got) == len(clean)
  for a, b in zip(got, clean):
    assert a["input_ids"].shape == (4, 32)  # never a change of batch shape
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])  # as if the bad documents were not there
  assert it.skipped_documents == 2
  assert "Skipped a document with no tokens (1 skipped so far)" in caplog.text
  assert "only special tokens (2 skipped so far)" in caplog.text


# 8. Config faults fail before compiling, naming the field -----------------------------------
@pytest.fixture
def compiles():
  from jax._src import monitoring  # pylint: disable=g-import-not-at-top
  events = []

  def listener(name, *_, **__):
    if name == "/jax/core/compile/backend_compile_duration":
      events.append(name)

  monitoring.register_event_duration_secs_listener(listener)
  yield events
  monitoring.unregister_event_duration_listener(listener)


RUN_BAD = [
    ("mesh", lambda c, r: c.mesh.update(data=3), r"mesh\.data"),
    ("batch_vs_mesh", lambda c, r: c.data.update(global_batch_size=12), "data.global_batch_size"),
    ("tokenizer", lambda c, r: c.data.update(tokenizer_model="/nonexistent/tok.model"),
     "data.tokenizer_model: no such file /nonexistent"),
    ("train_files", lambda c, r: c.data.update(train_files="/nonexistent/train.txt"),
     "data.train_files: no file matches '/nonexistent/train.txt'"),
    ("keep_gt_seq", lambda c, r: c.token_drop.update(keep_tokens=65), "token_drop.keep_tokens"),
    ("heads", lambda c, r: c.model.update(num_heads=3), "model.num_heads"),
    ("strategy", lambda c, r: c.token_drop.update(strategy="entropy"), "token_drop.strategy"),
    ("negative_batch", lambda c, r: c.data.update(global_batch_size=-16),
     "data.global_batch_size"),
]


@pytest.mark.parametrize("name,change,named", RUN_BAD, ids=[b[0] for b in RUN_BAD])
def test_bad_config_fails_before_compiling(ref, tmp_path, compiles, name, change, named):
  root, _ = ref
  config = fcfg(root)
  change(config, root)
  t0 = time.time()
  with pytest.raises((ValueError, FileNotFoundError), match=named):
    loop.train_and_evaluate(config, str(tmp_path / name))
  assert not compiles, f"{len(compiles)} XLA compile(s) before the error"
  assert time.time() - t0 < 20


# 9. Security: nothing is unpickled from user paths ------------------------------------------
def test_package_never_unpickles():
  pattern = re.compile(r"^\s*(import|from)\s+(c?pickle|cloudpickle|dill|marshal|shelve)\b|"
                       r"allow_pickle\s*=\s*True|torch\.load\(|yaml\.load\(|\beval\(|\bexec\(",
                       re.M)
  hits = []
  for d, _, files in os.walk(os.path.join(ROOT, "tokendrop_jax")):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(d, f)
        with open(path, encoding="utf-8") as fh:
          hits += [f"{path}: {m.group(0).strip()}" for m in pattern.finditer(fh.read())]
  assert not hits
  # Export refuses to overwrite without --overwrite: tests/test_export.py::test_refuses_to_overwrite
