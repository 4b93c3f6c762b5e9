"""gs:// everywhere, against a real GCS-protocol server (tests/gcs_emulator.py).

The file layer is checked on a local folder and on a bucket with the same
tests; the whole path (prepare -> train -> SIGTERM -> resume -> export ->
fine-tune, all in the bucket) is checked bit for bit against the same run in
a local folder.
"""
import gzip
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import jax
import numpy as np
import pytest
from absl import flags

from tests import gcs_emulator
from tests.resume_checks import final_state, losses
from tokendrop_jax import files, mirror as mirror_lib

flags.FLAGS.mark_as_parsed()


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
  """An empty folder: a local one, or a fresh prefix in the emulator's bucket."""
  if request.param == "local":
    return str(tmp_path / "root")
  request.getfixturevalue("gcs")
  return f"gs://{gcs_emulator.BUCKET}/{request.node.name.replace('[', '-').strip(']')}-" \
         f"{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------- file layer ---
def test_write_read_list_glob_remove(root):
  files.atomic_write(files.join(root, "a", "x.txt"), "hello")
  files.write_json(files.join(root, "a", "y.json"), {"k": [1, 2]})
  files.atomic_write(files.join(root, "b.bin"), b"\x00\x01")
  assert files.read_text(files.join(root, "a", "x.txt")) == "hello"
  assert files.read_json(files.join(root, "a", "y.json")) == {"k": [1, 2]}
  assert files.read_bytes(files.join(root, "b.bin")) == b"\x00\x01"
  assert files.listdir(root) == ["a", "b.bin"]
  assert files.isdir(files.join(root, "a")) and files.isfile(files.join(root, "b.bin"))
  assert not files.isfile(files.join(root, "a"))
  assert files.glob(files.join(root, "a", "*.txt")) == [files.join(root, "a", "x.txt")]
  assert files.glob(files.join(root, "nowhere", "*.txt")) == []
  assert files.size_and_mtime(files.join(root, "a", "x.txt"))[0] == 5
  files.atomic_write(files.join(root, "a", "x.txt"), "replaced")  # overwrite
  assert files.read_text(files.join(root, "a", "x.txt")) == "replaced"
  files.rmtree(files.join(root, "a"))
  assert files.listdir(root) == ["b.bin"]


def test_read_lines_of_gz_and_bad_utf8_name_the_file(root):
  good, bad = files.join(root, "t.txt.gz"), files.join(root, "bad.txt")
  files.atomic_write(good, gzip.compress("one\ntwo\n".encode()))
  files.atomic_write(bad, b"ok\n\xff\n")
  assert list(files.read_lines(good)) == ["one", "two"]
  assert files.expand(files.join(root, "*.gz")) == [good]
  with pytest.raises(ValueError, match=r"bad\.txt: not valid UTF-8 at line 2"):
    list(files.read_lines(bad))
  with pytest.raises(FileNotFoundError, match="data.train_files: no file matches"):
    files.expand(files.join(root, "none*.txt"), "data.train_files")


def test_publish_dir_writes_the_marker_last_and_local_copy_follows_it(root, tmp_path,
                                                                       monkeypatch):
  built = tmp_path / "built"
  (built / "sub").mkdir(parents=True)
  (built / "sub" / "data.bin").write_bytes(b"1234")
  (built / "meta.json").write_text('{"v": 1}')
  order = []
  copy = files.copy_file
  monkeypatch.setattr(files, "copy_file", lambda s, t: (order.append(files.basename(t)),
                                                        copy(s, t)))
  target = files.join(root, "ds")
  files.publish_dir(str(built), target, last="meta.json")
  if files.is_remote(root):
    assert order == ["data.bin", "meta.json"]
  assert files.read_bytes(files.join(target, "sub", "data.bin")) == b"1234"

  monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "cache"))
  local = files.local_copy(target, "meta.json")
  if not files.is_remote(root):
    assert local == target  # a local dataset is read in place
    return
  assert open(os.path.join(local, "sub", "data.bin"), "rb").read() == b"1234"
  assert files.local_copy(target, "meta.json") == local  # copied once
  files.atomic_write(files.join(target, "meta.json"), '{"v": 2}')  # prepared again
  again = files.local_copy(target, "meta.json")
  assert again != local and open(os.path.join(again, "meta.json")).read() == '{"v": 2}'
  with pytest.raises(FileNotFoundError, match="not a finished dataset: no meta.json"):
    files.local_copy(files.join(root, "absent"), "meta.json")


def test_metrics_writer_resumes_by_truncating_in_place(root):
  from tokendrop_jax.training import metrics
  with metrics.MetricsWriter(root, is_main=True) as w:
    for step in (1, 2, 3):
      w.write(step, {"loss": float(step)})
    # After a flush (every checkpoint), every record is in the folder.
    w.flush()
    assert [r["step"] for r in metrics.read_metrics(files.join(root, "metrics.jsonl"))] == [1, 2, 3]
  with metrics.MetricsWriter(root, is_main=True, resume_step=2) as w:
    w.write(3, {"loss": 30.0})
  rows = metrics.read_metrics(files.join(root, "metrics.jsonl"))
  assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0)]
  events = files.listdir(files.join(root, "tensorboard"))
  assert events and all(n.startswith("events.out.tfevents") for n in events)


def test_bucket_metrics_upload_in_the_background_a_bounded_number_of_times(gcs):
  """A record costs the writer no upload: the background thread sends the files at most
  once an interval, whole records only, and close() sends what is left."""
  del gcs
  from tokendrop_jax.training import metrics
  root = f"gs://{gcs_emulator.BUCKET}/bg-{uuid.uuid4().hex[:8]}"
  w = metrics.MetricsWriter(root, is_main=True, tensorboard=False)
  w._mirror.interval_s = 3600.0  # pylint: disable=protected-access
  for step in range(1, 201):
    w.write(step, {"loss": float(step)})
  mirror = w._mirror  # pylint: disable=protected-access
  time.sleep(1.0)
  assert mirror.uploads <= 1  # 200 records, at most the first interval's upload
  w.close()
  rows = metrics.read_metrics(files.join(root, "metrics.jsonl"))
  assert [r["step"] for r in rows] == list(range(1, 201))  # nothing lost at close
  assert mirror.uploads <= 2


def test_a_grown_file_uploads_only_its_new_bytes(gcs):
  """After the first upload, each upload sends the bytes written since (appended to the
  object by compose); a rewritten file (a resume's truncation) goes whole again."""
  del gcs
  root = f"gs://{gcs_emulator.BUCKET}/append-{uuid.uuid4().hex[:8]}"
  mirror = mirror_lib.Mirror(root, interval_s=3600.0)
  local = mirror.path("log.txt")
  with open(local, "a") as f:
    f.write("a" * 1000 + "\n")
  mirror.flush()
  assert mirror.bytes_uploaded == 1001
  for i in range(3):
    with open(local, "a") as f:
      f.write(f"record {i}\n")
    mirror.flush()
  assert mirror.bytes_uploaded == 1001 + 3 * len("record 0\n")
  assert files.read_text(files.join(root, "log.txt")) == "a" * 1000 + "\n" + "".join(
      f"record {i}\n" for i in range(3))
  files.atomic_write(local, "rewritten\n")  # a new file at the same path
  mirror.flush()
  assert files.read_text(files.join(root, "log.txt")) == "rewritten\n"
  assert not [n for n in files.listdir(root) if ".tail-" in n]  # no parts left behind
  mirror.close()


# ------------------------------------------------------------- whole path ---
def _tiny(corpus, dataset_dir, **train):
  from tests.test_config import load
  c = load("tiny")
  c.data.update(demo_corpus=False, train_files=files.join(corpus, "train.txt"),
                valid_files=files.join(corpus, "valid.txt"), dataset_dir=dataset_dir)
  c.train.update(num_steps=20, log_every=1, eval_every=20, checkpoint_every=10,
                 keep_checkpoints=5, async_checkpoint=True, **train)
  return c


@pytest.mark.slow
def test_bucket_run_prepare_sigterm_resume_export_finetune_equals_local(gcs, tmp_path,
                                                                        monkeypatch):
  from tests.test_finetune import write_task
  from tokendrop_jax import export, prepare
  from tokendrop_jax.data import demo_corpus
  from tokendrop_jax.training import checkpoint, finetune_loop, loop
  from tests.test_config import load

  monkeypatch.setenv(files.CACHE_ENV, str(tmp_path / "cache"))
  bucket = f"gs://{gcs_emulator.BUCKET}/whole-{uuid.uuid4().hex[:8]}"
  # Sources in the bucket; prepared once into the bucket.
  local_corpus = tmp_path / "corpus"
  demo_corpus.write_demo_corpus(str(local_corpus), max_bytes=300_000)
  for name in ("train.txt", "valid.txt"):
    files.copy_file(str(local_corpus / name), files.join(bucket, "corpus", name))
  data = files.join(bucket, "data")
  result = prepare.prepare(_tiny(files.join(bucket, "corpus"), ""), data, workers=1,
                           say=lambda line: None)
  assert result["output"] == data and files.exists(files.join(data, "corpus_meta.json"))
  assert "nothing to do" in prepare.prepare(_tiny(files.join(bucket, "corpus"), ""), data,
                                            workers=1, say=lambda line: None)["status"]

  # The reference: a local workdir, uninterrupted.
  local = str(tmp_path / "local_run")
  config = _tiny(files.join(bucket, "corpus"), data)
  loop.train_and_evaluate(config, local)

  # The bucket workdir, stopped by SIGTERM while the step-10 save is in flight, then resumed.
  remote = files.join(bucket, "run")
  save = checkpoint.Checkpointer.save

  def save_then_signal(self, step, *a, **k):
    started = save(self, step, *a, **k)
    if step == 10 and started:
      os.kill(os.getpid(), signal.SIGTERM)
    return started

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_signal)
  first = loop.train_and_evaluate(config, remote)
  monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
  assert first["step"] == 11
  second = loop.train_and_evaluate(config, remote)
  assert second["step"] == 20
  a, b = final_state(config, local), final_state(config, remote)
  assert a[1] == b[1] == 20
  for x, y in zip(jax.tree_util.tree_leaves(a[0]), jax.tree_util.tree_leaves(b[0]), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert losses(local) == losses(remote)
  assert len(losses(remote)) == 20
  for name in ("config.json", "tokenizer.model", "summary.json", "plots/loss.png"):
    assert files.exists(files.join(remote, name)), name
  assert files.listdir(files.join(remote, "tensorboard"))

  # Export from the bucket to the bucket: the same bytes as a local export.
  hf_local, hf_remote = str(tmp_path / "hf"), files.join(bucket, "hf")
  export.export(local, hf_local)
  export.export(remote, hf_remote)
  assert sorted(files.listdir(hf_remote)) == sorted(os.listdir(hf_local))
  for name in os.listdir(hf_local):
    if name != "tokendrop_export.json":  # names the workdir it came from
      assert files.read_bytes(files.join(hf_remote, name)) == open(
          os.path.join(hf_local, name), "rb").read(), name
  with pytest.raises(FileExistsError, match="pass --overwrite"):
    export.export(remote, hf_remote)

  # Fine-tuning from the bucket run, task files and outputs in the bucket too.
  task = {}
  for key, n, seed in (("train_file", 64, 0), ("eval_file", 32, 1)):
    path = write_task(tmp_path / f"{key}.tsv", n, seed)
    task[key] = files.join(bucket, "task", f"{key}.tsv")
    files.copy_file(path, task[key])

  def ft_config(init_from):
    c = load("glue", "sst2")
    c.init_from = init_from
    c.data.update(seq_len=16, global_batch_size=16, **task)
    c.train.update(num_epochs=1, async_checkpoint=False)
    return c

  ft_local = finetune_loop.train_and_evaluate(ft_config(local), str(tmp_path / "ft"))
  ft_remote = finetune_loop.train_and_evaluate(ft_config(remote), files.join(bucket, "ft"))
  results = files.read_json(files.join(bucket, "ft", "results.json"))
  assert results["init_from"] == remote
  assert ft_local["results"]["last"] == ft_remote["results"]["last"]
  assert json.loads(open(tmp_path / "ft" / "results.json").read())["epochs"] == results["epochs"]


# ------------------------------------------------------------- fail fast ---
def _main(module, *args):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return subprocess.run([sys.executable, "-m", module, *args], cwd=root, capture_output=True,
                        text=True, timeout=180, check=False)


def test_a_missing_bucket_is_refused_before_any_work(gcs, tmp_path):
  """Creating, listing and checking paths in a missing bucket all succeed against the
  server; the mains probe with a write first and stop naming the bucket."""
  del gcs
  missing = "gs://no-such-bucket-4711/data"
  files.makedirs(missing)  # what used to let everything through
  with pytest.raises(ValueError, match=r"--output=gs://no-such-bucket-4711/data: cannot write "
                                       r"there \(does the bucket gs://no-such-bucket-4711 exist"):
    files.check_writable(missing, "--output")
  files.check_writable(f"gs://{gcs_emulator.BUCKET}/ok", "--output")  # a real one passes
  res = _main("tokendrop_jax.prepare", "--config=configs/tiny.py", f"--output={missing}",
              "--workers=1")
  assert res.returncode == 2, res.stderr[-2000:]
  assert "error: --output=gs://no-such-bucket-4711/data: cannot write there" in res.stderr
  assert "Traceback" not in res.stderr and "tokeniz" not in res.stdout.lower()
  res = _main("tokendrop_jax.train", "--config=configs/tiny.py",
              "--workdir=gs://no-such-bucket-4711/run")
  assert res.returncode == 2 and "error: --workdir=gs://no-such-bucket-4711/run" in res.stderr


def test_a_read_only_folder_is_refused_before_any_work(tmp_path):
  """A read-only mount (root may write anywhere else): the train main stops at once."""
  mnt = tmp_path / "ro"
  mnt.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)],
                    capture_output=True, check=False).returncode:
    pytest.skip("cannot mount a tmpfs here")
  try:
    with pytest.raises(ValueError, match=r"--workdir=.*/ro/run: cannot write there: OSError"):
      files.check_writable(str(mnt / "run"), "--workdir")
    res = _main("tokendrop_jax.train", "--config=configs/tiny.py", f"--workdir={mnt / 'run'}")
    assert res.returncode == 2 and f"error: --workdir={mnt / 'run'}: cannot write" in res.stderr
    assert "Traceback" not in res.stderr and not (mnt / "run").exists()
  finally:
    subprocess.run(["umount", "-l", str(mnt)], check=False)
