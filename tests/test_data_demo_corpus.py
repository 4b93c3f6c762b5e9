"""The built-in demo corpus: deterministic, ~1.5 MB, the documented text format."""
import os
import subprocess
import sys

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
