"""TFDS/ArrayRecord corpus builder: content, token counts, reuse, TFDS sources, bad input."""
import gzip
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tokendrop_jax.data import demo_corpus
from tokendrop_jax.data import text_builder, text_sources
from tokendrop_jax.data import tokenizer as tokenizer_lib


def _write(path, docs):
  text = "\n\n".join("\n".join(d) for d in docs) + "\n"
  if str(path).endswith(".gz"):
    with gzip.open(path, "wt", encoding="utf-8") as f:
      f.write(text)
  else:
    path.write_text(text, encoding="utf-8")
  return str(path)


@pytest.fixture(scope="module")
def docs():
  return demo_corpus.demo_documents(max_bytes=120_000)


@pytest.fixture(scope="module")
def tok(docs, tmp_path_factory):
  d = tmp_path_factory.mktemp("builder_tok")
  path = _write(d / "all.txt", docs)
  return tokenizer_lib.Tokenizer(tokenizer_lib.train_tokenizer([path], 700, str(d / "spm")))


@pytest.fixture(scope="module")
def files(docs, tmp_path_factory):
  d = tmp_path_factory.mktemp("builder_text")
  n = len(docs)
  train = [_write(d / "train-0.txt", docs[: n // 2]),
           _write(d / "train-1.txt.gz", docs[n // 2: -3])]
  valid = _write(d / "valid.txt", docs[-3:])
  return d, train, valid


@pytest.fixture(scope="module")
def built(files, tok, tmp_path_factory):
  d, _, valid = files
  out = tmp_path_factory.mktemp("builder_out")
  return text_builder.build_corpus(str(d / "train-*"), [valid], tok, str(out)), out


def _read_all(source):
  return [source[i] for i in range(len(source))]


def test_documents_keep_sentences(built, docs, tok):
  path, _ = built
  train = _read_all(text_builder.open_split(path, "train"))
  valid = _read_all(text_builder.open_split(path, "validation"))
  assert len(train) == len(docs) - 3 and len(valid) == 3
  for got, doc in zip(train + valid, docs):  # stored in source order, files in glob order
    want = [tok.encode(s) for s in doc]
    want = [w for w in want if w]
    assert got["ids"].dtype == np.int32 and got["sentence_lengths"].dtype == np.int32
    np.testing.assert_array_equal(got["sentence_lengths"], [len(w) for w in want])
    np.testing.assert_array_equal(got["ids"], np.concatenate(want))
  assert "tensorflow" not in sys.modules


def test_token_counts_and_meta(built, tok):
  path, _ = built
  counts = text_builder.load_token_counts(path)
  train = _read_all(text_builder.open_split(path, "train"))
  want = np.bincount(np.concatenate([d["ids"] for d in train]), minlength=tok.vocab_size)
  assert counts.dtype == np.int64 and counts.shape == (tok.vocab_size,)
  np.testing.assert_array_equal(counts, want)
  meta = text_builder.load_corpus_meta(path)
  assert meta["vocab_size"] == tok.vocab_size
  assert meta["special_ids"] == {"pad_id": 0, "unk_id": 1, "cls_id": 2, "sep_id": 3, "mask_id": 4}
  assert meta["splits"]["train"]["tokens"] == counts.sum()
  assert tokenizer_lib.Tokenizer(os.path.join(path, text_builder.TOKENIZER_FILE)).vocab_size == 700


def test_rerun_reuses_and_leaves_no_temp(built, files, tok):
  path, out = built
  d, _, valid = files
  meta_mtime = os.stat(os.path.join(path, text_builder.META_FILE)).st_mtime_ns
  again = text_builder.build_corpus(str(d / "train-*"), [valid], tok, str(out))
  assert again == path
  assert os.stat(os.path.join(path, text_builder.META_FILE)).st_mtime_ns == meta_mtime
  assert os.listdir(out) == [os.path.basename(path)]
  with pytest.raises(ValueError, match="other inputs"):  # same name, other inputs
    text_builder.build_corpus([valid], [valid], tok, str(out), name=os.path.basename(path))


def test_bad_inputs_leave_nothing(files, tok, tmp_path):
  d, train, valid = files
  out = tmp_path / "out"
  with pytest.raises(FileNotFoundError, match="train_files.*missing.txt"):
    text_builder.build_corpus([str(d / "missing.txt")], [valid], tok, str(out))
  empty = tmp_path / "empty.txt"
  empty.write_text("\n\n  \n")
  with pytest.raises(ValueError, match="validation split: empty corpus.*empty.txt"):
    text_builder.build_corpus(train, [str(empty)], tok, str(out))
  bad = tmp_path / "bad.txt"
  bad.write_bytes(b"A fine line.\n\nThen \xff\xfe broken bytes.\n")
  with pytest.raises(ValueError, match="bad.txt.*UTF-8.*line 3"):
    text_builder.build_corpus(train, [str(bad)], tok, str(out))
  assert not out.exists() or os.listdir(out) == []  # no half-written dataset
  with pytest.raises(FileNotFoundError, match="no token_counts.npy"):
    text_builder.load_token_counts(str(tmp_path))


class TinyTextDs(tfds.core.GeneratorBasedBuilder):
  """A local TFDS text dataset, standing in for e.g. wikipedia (field 'text')."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text(), "title": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(8)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {"title": f"t{i}",
                "text": f"Article {i} starts here. It has two sentences.\nA new paragraph {i}."}


def test_tfds_source_by_name(tok, tmp_path):
  src_dir = str(tmp_path / "tfds")
  TinyTextDs(data_dir=src_dir, file_format="array_record").download_and_prepare()
  path = text_builder.build_corpus_from_tfds(
      "tiny_text_ds", "text", tok, str(tmp_path / "out"), train_split="train[:6]",
      valid_split="train[6:]", tfds_data_dir=src_dir)
  train = _read_all(text_builder.open_split(path, "train"))
  assert len(train) == 6 and len(text_builder.open_split(path, "validation")) == 2
  want = set()  # TFDS stores its examples in a shuffled order
  for i in range(8):
    sents = [f"Article {i} starts here.", "It has two sentences.", f"A new paragraph {i}."]
    want.add((tuple(sum((tok.encode(s) for s in sents), [])),
              tuple(len(tok.encode(s)) for s in sents)))
  for doc in train:
    assert (tuple(doc["ids"].tolist()), tuple(doc["sentence_lengths"].tolist())) in want
  with pytest.raises(KeyError, match="no text field 'body'"):
    text_builder.build_corpus_from_tfds("tiny_text_ds", "body", tok, str(tmp_path / "out2"),
                                        valid_split="train[6:]", tfds_data_dir=src_dir)
  assert not os.listdir(tmp_path / "out2")


def test_tfds_source_mock_data():
  # mock_data fakes every builder's data_dir, so only the reading side is run under it.
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    source = text_sources.TfdsText("lm1b", "text", validation_split="test")
    docs = list(source.documents(text_sources.TRAIN))
  assert len(docs) == 12
  assert all(isinstance(s, str) and s.strip() for d in docs for s in d)
