"""The data-preparation main: prepare once, then a launch that builds nothing.

A prepared directory trains at once (no tokenizer trained, no dataset built),
a parallel build writes the bytes of a serial one, a rerun does nothing or
refuses other inputs without touching the directory, a killed run's leftovers
are never taken as finished, and a process other than 0 that cannot see
process 0's dataset stops with what to do.
"""
import concurrent.futures
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import jax
import pytest
from absl import flags

from tests.test_config import load
from tokendrop_jax import prepare as prepare_lib
from tokendrop_jax.data import demo_corpus, encode_pool, text_builder
from tokendrop_jax.data import tokenizer as tokenizer_lib
from tokendrop_jax.training import inputs, loop
from tokendrop_jax.training.input_settings import InputSettings

flags.FLAGS.mark_as_parsed()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 400


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Three train files and one validation file of stdlib prose (~60 KB)."""
  d = tmp_path_factory.mktemp("prepare_text")
  docs = demo_corpus.demo_documents(max_bytes=60_000)
  valid, train = docs[::4], [doc for i, doc in enumerate(docs) if i % 4]
  parts = {f"train-{i}.txt": train[i::3] for i in range(3)}
  parts["valid.txt"] = valid
  for name, part in parts.items():
    (d / name).write_text("\n\n".join("\n".join(doc) for doc in part) + "\n", encoding="utf-8")
  return {"train_files": str(d / "train-*.txt"), "valid_files": str(d / "valid.txt"), "dir": d}


def config(corpus, **data):
  c = load("tiny", "none")  # one step kind: the least to compile
  c.model.update(vocab_size=VOCAB, hidden_size=32, num_layers=2, intermediate_size=64)
  c.data.update(demo_corpus=False, train_files=corpus["train_files"],
                valid_files=corpus["valid_files"])
  c.data.update(**data)
  c.train.update(num_steps=2, log_every=1, eval_every=2, eval_batches=1, checkpoint_every=2,
                 async_checkpoint=False)
  return c


def prepare_inputs(c, workdir: str):
  """What the train main does first: find (prepared) or build the inputs of `c`."""
  return inputs.prepare(InputSettings.of(c), workdir)


def quiet(_line):
  pass


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("prepare_out") / "prepared")
  return prepare_lib.prepare(config(corpus), out, workers=1, say=quiet)


def stamps(d):
  """{relative path: mtime_ns} of every file under `d`."""
  out = {}
  for root, _, files in os.walk(d):
    for f in files:
      p = os.path.join(root, f)
      out[os.path.relpath(p, d)] = os.stat(p).st_mtime_ns
  return out


def read_tree(d):
  out = {}
  for rel in stamps(d):
    with open(os.path.join(d, rel), "rb") as f:
      out[rel] = f.read()
  return out


def test_prepared_directory_is_complete(prepared):
  out = prepared["output"]
  assert inputs.is_prepared(out)
  meta = text_builder.load_corpus_meta(out)
  assert meta["vocab_size"] == VOCAB and set(meta["splits"]) == {"train", "validation"}
  assert meta["tokenizer"] == os.path.join(out, "tokenizer.model")
  assert set(meta["prepared"]["recipe"]["data.train_files"]) == {
      os.path.join(os.path.dirname(meta["source"]["train"][0]), f"train-{i}.txt")
      for i in range(3)}
  assert tokenizer_lib.Tokenizer(prepared["tokenizer"]).vocab_size == VOCAB
  assert text_builder.load_token_counts(out).sum() == meta["splits"]["train"]["tokens"]
  assert os.listdir(os.path.dirname(out)) == ["prepared"]  # no staging left behind
  lines = prepare_lib.report(prepared)
  assert lines[-1] == f"launch with: --config.data.dataset_dir={out}"
  assert any(line.split()[:1] == ["train"] for line in lines)


def _refuse(*args, **kwargs):
  raise AssertionError("built something that it should have read")


def _no_building(monkeypatch):
  for module, name in ((text_builder, "build_corpus"), (text_builder, "build_corpus_from_tfds"),
                       (tokenizer_lib, "train_tokenizer"), (demo_corpus, "write_demo_corpus"),
                       (inputs, "text_files"), (inputs, "corpus_source"), (inputs, "_build")):
    monkeypatch.setattr(module, name, _refuse)


def test_train_starts_from_prepared_without_building(prepared, corpus, tmp_path, monkeypatch):
  out, before = prepared["output"], stamps(prepared["output"])
  _no_building(monkeypatch)
  c = config(corpus, dataset_dir=out, train_files="", valid_files="")
  workdir = tmp_path / "run"
  summary = loop.train_and_evaluate(c, str(workdir))
  assert summary["step"] == 2 and summary["eval/loss"] > 0
  assert (workdir / "tokenizer.model").read_bytes() == open(prepared["tokenizer"], "rb").read()
  assert not (workdir / "data").exists() and not (workdir / "corpus").exists()
  assert stamps(out) == before
  # The train main's own sources are not needed, and a demo_corpus default is not used.
  dataset_dir, tok = prepare_inputs(config(corpus, dataset_dir=out, demo_corpus=True),
                                    str(workdir))
  assert dataset_dir == out and tok.vocab_size == VOCAB


def test_train_refuses_a_mismatched_prepared_directory(prepared, corpus, tmp_path):
  out = prepared["output"]
  other_tok = tmp_path / "other.model"
  tokenizer_lib.train_tokenizer([str(corpus["dir"] / "valid.txt")], 300, str(tmp_path / "other"))
  with pytest.raises(ValueError, match=re.escape(f"data.tokenizer_model={other_tok} is not the "
                                                 f"tokenizer of the prepared data.dataset_dir "
                                                 f"({out}/tokenizer.model)")):
    prepare_inputs(config(corpus, dataset_dir=out, tokenizer_model=str(other_tok)),
                   str(tmp_path / "a"))
  same = prepare_inputs(config(corpus, dataset_dir=out, tokenizer_model=prepared["tokenizer"]),
                        str(tmp_path / "b"))
  assert same[0] == out
  bad = config(corpus, dataset_dir=out)
  bad.model.vocab_size = 300
  with pytest.raises(ValueError, match="model.vocab_size=300 .*prepared.*400 pieces"):
    prepare_inputs(bad, str(tmp_path / "c"))
  (tmp_path / "d").mkdir()
  shutil.copyfile(other_tok, tmp_path / "d" / "tokenizer.model")  # a run started on another
  with pytest.raises(ValueError, match="started with another tokenizer"):
    prepare_inputs(config(corpus, dataset_dir=out), str(tmp_path / "d"))
  for refused in "acd":
    assert not (tmp_path / refused / "tokenizer.model").exists() or refused == "d"
  assert (tmp_path / "d" / "tokenizer.model").read_bytes() == other_tok.read_bytes()


def test_rerun_does_nothing(prepared, corpus):
  out, before = prepared["output"], stamps(prepared["output"])
  again = prepare_lib.prepare(config(corpus), out, workers=1, say=quiet)
  assert "nothing to do" in again["status"] and again["splits"] == prepared["splits"]
  same_tok = prepare_lib.prepare(config(corpus, tokenizer_model=prepared["tokenizer"]), out,
                                 say=quiet)  # the tokenizer it was built with, given explicitly
  assert "nothing to do" in same_tok["status"]
  assert stamps(out) == before


def test_rerun_with_other_inputs_refuses_and_keeps_everything(prepared, corpus):
  out, before = prepared["output"], read_tree(prepared["output"])
  train1 = corpus["dir"] / "train-1.txt"
  cases = [
      (config(corpus, valid_files=str(corpus["dir"] / "train-0.txt")),
       r"data.valid_files: new: .*train-0.txt; gone: .*valid.txt"),
      (config(corpus, tokenizer_type="bpe"), r"tokenizer: trained, data.tokenizer_type='bpe' now"),
      (config(corpus, demo_corpus=True, train_files="", valid_files=""),
       r"data.demo_corpus: True now, not set"),
  ]
  small = config(corpus)
  small.model.vocab_size = 300
  cases.append((small, "model.vocab_size: 300 now, 400 when it was prepared"))
  for c, match in cases:
    with pytest.raises(ValueError, match=match):
      prepare_lib.prepare(c, out, say=quiet)
  st = os.stat(train1)
  os.utime(train1, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  try:
    with pytest.raises(ValueError, match=r"data.train_files: changed since: .*train-1.txt"):
      prepare_lib.prepare(config(corpus), out, say=quiet)
  finally:
    os.utime(train1, ns=(st.st_atime_ns, st.st_mtime_ns))
  assert read_tree(out) == before


def test_parallel_build_writes_the_serial_bytes(prepared, corpus, tmp_path, monkeypatch):
  monkeypatch.setattr(encode_pool, "_ENCODE_CHUNK", 50)  # many chunks (made in this process)
  pools = []

  class RecordingPool(concurrent.futures.ProcessPoolExecutor):
    def __init__(self, workers, **kwargs):
      pools.append(workers)
      super().__init__(workers, **kwargs)

  monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", RecordingPool)
  c = config(corpus, tokenizer_model=prepared["tokenizer"])
  serial = prepare_lib.prepare(c, str(tmp_path / "serial"), workers=1, say=quiet)["output"]
  assert not pools
  parallel = prepare_lib.prepare(c, str(tmp_path / "parallel"), workers=2, say=quiet)["output"]
  assert pools and set(pools) == {2}
  a, b = read_tree(serial), read_tree(parallel)
  assert sorted(a) == sorted(b) and any(name.endswith("array_record-00000-of-00001")
                                        for name in a)
  meta_a, meta_b = (json.loads(t.pop(text_builder.META_FILE)) for t in (a, b))
  for meta in (meta_a, meta_b):
    del meta["prepared"]["workers"], meta["tokenizer"]
  assert meta_a == meta_b
  for name in a:
    assert a[name] == b[name], name
  assert a["token_counts.npy"] == open(os.path.join(prepared["output"], "token_counts.npy"),
                                       "rb").read()


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_half_built_leftovers_are_never_taken_as_finished(prepared, corpus, tmp_path):
  out = tmp_path / "out"
  mine = tmp_path / f".tmp-out-prepare-{socket.gethostname()}-{_dead_pid()}"
  theirs = tmp_path / ".tmp-out-prepare-otherhost-12345"
  for staging in (mine, theirs):  # what a killed run leaves: all but the final rename
    shutil.copytree(prepared["output"], staging / "out")
  assert not inputs.is_prepared(str(out))
  lines = []
  c = config(corpus, tokenizer_model=prepared["tokenizer"])
  result = prepare_lib.prepare(c, str(out), say=lines.append)
  assert "prepared in" in result["status"] and inputs.is_prepared(str(out))
  assert not mine.exists() and theirs.exists()
  assert any(f"removed {mine}" in line for line in lines)
  assert any(f"ignoring {theirs}" in line for line in lines)

  partial = tmp_path / "partial"  # e.g. a copy that stopped half-way: no corpus_meta.json
  shutil.copytree(prepared["output"], partial, ignore=shutil.ignore_patterns("corpus_meta.json"))
  assert not inputs.is_prepared(str(partial))
  with pytest.raises(ValueError, match="exists and is not a prepared dataset"):
    prepare_lib.prepare(c, str(partial), say=quiet)


def test_other_processes_read_what_process_0_built_or_fail_clearly():
  built = ("/nfs/nowhere/corpus-123", "/run/tokenizer.model")
  assert inputs.inputs_here(built, 0, 4, exists=None) == built
  assert inputs.inputs_here(built, 2, 4, exists=lambda *p: True) == (
      built[0], "/nfs/nowhere/corpus-123/tokenizer.model")
  with pytest.raises(FileNotFoundError) as e:
    inputs.inputs_here(built, 3, 4, exists=lambda *p: False)
  message = str(e.value)
  for part in ("process 3 of 4", built[0], "python -m tokendrop_jax.prepare",
               "--config.data.dataset_dir="):
    assert part in message
  payload = {"found": ["/d/\u00fc", "/t.model"]}  # one process: the broadcast hands it back
  assert inputs._share(payload) == payload  # pylint: disable=protected-access


def _as_process(monkeypatch, index, shared):
  """Runs inputs.prepare as process `index` of 2; `shared` holds process 0's payload."""
  monkeypatch.setattr(jax, "process_index", lambda: index)
  monkeypatch.setattr(jax, "process_count", lambda: 2)

  def share(payload):
    if index == 0:
      shared.append(payload)
      return payload
    return shared[0]
  monkeypatch.setattr(inputs, "_share", share)


def test_process_1_never_builds(corpus, tmp_path, monkeypatch):
  _no_building(monkeypatch)
  _as_process(monkeypatch, 1, [{"found": [str(tmp_path / "host0" / "corpus-1"), "x.model"]}])
  with pytest.raises(FileNotFoundError, match="process 1 of 2 cannot read"):
    prepare_inputs(config(corpus), str(tmp_path / "run"))


def test_an_error_of_process_0_stops_the_others(prepared, corpus, tmp_path, monkeypatch):
  bad = config(corpus, dataset_dir=prepared["output"])
  bad.model.vocab_size = 300
  shared = []
  _as_process(monkeypatch, 0, shared)
  with pytest.raises(ValueError, match="model.vocab_size=300"):
    prepare_inputs(bad, str(tmp_path / "run0"))
  assert "model.vocab_size=300" in shared[0]["error"]
  _no_building(monkeypatch)
  _as_process(monkeypatch, 1, shared)
  with pytest.raises(ValueError, match="process 0 could not prepare the inputs: ValueError: "
                                       "model.vocab_size=300"):
    prepare_inputs(bad, str(tmp_path / "run1"))


def _main(*args):
  return subprocess.run([sys.executable, "-m", "tokendrop_jax.prepare", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_main_help_rerun_and_bad_field(prepared, corpus, tmp_path):
  proc = _main("--help")  # absl exits 1 after printing the help, as for the train main
  assert proc.returncode in (0, 1) and not proc.stderr, proc.stderr[-2000:]
  assert "--output" in proc.stdout and "--workers" in proc.stdout
  fields = [f"--config.model.vocab_size={VOCAB}", "--config.data.demo_corpus=False",
            f"--config.data.train_files={corpus['train_files']}",
            f"--config.data.valid_files={corpus['valid_files']}"]
  proc = _main("--config=configs/tiny.py:frequency", f"--output={prepared['output']}", *fields)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "nothing to do" in proc.stdout
  assert f"--config.data.dataset_dir={prepared['output']}" in proc.stdout
  proc = _main("--config=configs/tiny.py", f"--output={tmp_path / 'x'}", *fields,
               "--config.data.seq_len=4")
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert proc.stderr.startswith("error: ") and "data.seq_len" in proc.stderr
  assert not (tmp_path / "x").exists()
