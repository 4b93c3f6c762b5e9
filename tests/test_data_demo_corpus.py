"""The built-in demo corpus: deterministic, ~1.5 MB, the documented text format."""
import ast
import contextlib
import gc
import os
import platform
import subprocess
import sys
import sysconfig

import pytest

from tokendrop_jax.data import demo_corpus


@pytest.fixture(scope="module")
def written(tmp_path_factory):
  return demo_corpus.write_demo_corpus(str(tmp_path_factory.mktemp("demo")))


def test_size_and_format(written):
  train, valid = written
  train_size, valid_size = os.path.getsize(train), os.path.getsize(valid)
  assert 1_200_000 < train_size + valid_size < 2_000_000
  assert 0.02 < valid_size / (train_size + valid_size) < 0.1
  for path in written:
    text = open(path, encoding="utf-8").read()
    assert "\n\n\n" not in text and not text.startswith("\n") and text.endswith("\n")
    docs = text.strip("\n").split("\n\n")
    assert len(docs) > 20
    lines = [ln for d in docs for ln in d.split("\n")]
    assert all(len(ln.split()) >= 4 for ln in lines)
    assert not any(ln.lstrip().startswith(">>>") for ln in lines)


def test_deterministic_and_module_entry(written, tmp_path):
  out = tmp_path / "again"
  subprocess.run([sys.executable, "-m", "tokendrop_jax.data.demo_corpus", f"--out_dir={out}"],
                 check=True, capture_output=True)
  for path in written:
    with open(path, "rb") as a, open(out / os.path.basename(path), "rb") as b:
      assert a.read() == b.read()
  assert sorted(os.listdir(out)) == ["train.txt", "valid.txt"]  # no temp files left


def test_split_sentences_drops_code():
  text = "Return the sum of a and b. It is fast!\n\n>>> add(1, 2)\n3\n\nSee also: the docs."
  assert demo_corpus.split_sentences(text) == [
      "Return the sum of a and b.", "See also: the docs."]


@contextlib.contextmanager
def _parse_inside_parse():
  """The state behind CPython gh-106905: an `ast.parse` runs inside another one.

  Here a gc callback; in a test run, e.g. pytest's unraisablehook formatting the
  traceback (3.11's `traceback` calls `ast.parse`) of a failing `__del__` collected
  mid-parse. Yields a list that counts the inner parses.
  """
  calls = []

  def parse_during_gc(phase, info):
    del info
    if phase == "start":
      calls.append(ast.parse("x = 1"))

  was_enabled = gc.isenabled()
  gc.enable()
  gc.callbacks.append(parse_during_gc)
  try:
    yield calls
  finally:
    gc.callbacks.remove(parse_during_gc)
    if not was_enabled:
      gc.disable()


def _parse_pydecimal_in_process():
  """-> the SystemError that `ast.parse` of the stdlib's `_pydecimal.py` raises, or None."""
  with open(os.path.join(sysconfig.get_paths()["stdlib"], "_pydecimal.py"), encoding="utf-8") as f:
    source = f.read()
  try:
    ast.parse(source)
  except SystemError as e:
    return e
  return None


def test_parse_inside_parse_breaks_in_process_ast():
  with _parse_inside_parse() as inner_parses:
    error = _parse_pydecimal_in_process()
  assert inner_parses
  if error is None:
    pytest.skip(f"Python {platform.python_version()} parses fine here (gh-106905 fixed), "
                "so there is no failure to show")
  assert "AST constructor recursion depth mismatch" in str(error)


def test_corpus_immune_to_parse_inside_parse(written, tmp_path):
  with _parse_inside_parse() as inner_parses:
    _parse_pydecimal_in_process()  # fails here on CPython 3.11 (test above)
    again = demo_corpus.write_demo_corpus(str(tmp_path))
  assert inner_parses
  for a, b in zip(written, again):
    with open(a, "rb") as fa, open(b, "rb") as fb:
      assert fa.read() == fb.read()
