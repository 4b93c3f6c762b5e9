"""Sources beyond plain text: JSON lines, Parquet, TFDS splits, weighted mixtures and a
validation split carved from train (tokendrop_jax/data/text_readers.py, text_sources.py,
training/inputs.py).

Each format is read from files made here (locally and in a GCS-protocol bucket), a
mixture keeps its weights and stops where it says, a carved validation split is
disjoint from train and the same on every build, bad inputs fail before any long
work naming the field or the file, and a mixture prepared once trains.
"""
import gzip
import json
import os
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow_datasets as tfds
from absl import flags

from tests import gcs_emulator
from tests.test_config import load
from tokendrop_jax import config_checks, config_fields, files
from tokendrop_jax import prepare as prepare_lib
from tokendrop_jax.data import demo_corpus, text_builder, text_readers, text_sources
from tokendrop_jax.data import tokenizer as tokenizer_lib
from tokendrop_jax.training import inputs
from tokendrop_jax.training.input_settings import Corpus

flags.FLAGS.mark_as_parsed()

TRAIN, VALIDATION = text_sources.TRAIN, text_sources.VALIDATION
VOCAB = 400


def write_parquet(path, texts, field="text", row_group_size=4):
  """A Parquet file (local or gs://) with a text column `field` and an id column."""
  table = pa.table({"id": list(range(len(texts))), field: texts})
  files.makedirs(files.dirname(path))
  with files.open(path, "wb") as f:
    pq.write_table(table, f, row_group_size=row_group_size)
  return path


def write_jsonl(path, texts, field="text"):
  data = "".join(json.dumps({"id": i, field: t}) + "\n" for i, t in enumerate(texts)).encode()
  files.atomic_write(path, gzip.compress(data) if path.endswith(".gz") else data)
  return path


_LETTERS = np.array(list("abcdefghijklmnopqrstuvwxyz"))
WORDS = ["".join(np.random.default_rng(i).choice(_LETTERS, 2 + i % 7)) for i in range(600)]


def words(rng, n):
  return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n))


def synthetic_texts(seed, n, sentences=(1, 6), length=(3, 30)):
  """`n` documents of random words, each a few sentences (split at '. ' + capital)."""
  rng = np.random.default_rng(seed)
  return [" ".join(f"Sentence {j} {words(rng, rng.integers(*length))}."
                   for j in range(rng.integers(*sentences))) for _ in range(n)]


@pytest.fixture(scope="module")
def texts():
  """Free-text documents (a record each) of up to 4 sentences of stdlib prose."""
  docs = demo_corpus.demo_documents(max_bytes=80_000)
  return [" ".join(doc[i:i + 4]) for doc in docs for i in range(0, len(doc), 4)]


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
  """An empty folder: a local one, or a fresh prefix in the emulator's bucket."""
  if request.param == "local":
    return str(tmp_path / "root")
  request.getfixturevalue("gcs")
  return f"gs://{gcs_emulator.BUCKET}/sources-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- formats ---
def test_file_format_by_name():
  cases = {"a.txt": "text", "a.txt.gz": "text", "a": "text", "a.JSONL": "jsonl",
           "a.jsonl.gz": "jsonl", "a.json": "jsonl", "gs://b/x/a.parquet": "parquet"}
  assert {name: text_readers.file_format(name) for name in cases} == cases


def test_jsonl_and_parquet_read_a_document_per_record(root, texts):
  records = texts[:10] + ["", None, "   "] + texts[10:12]  # empty records are skipped
  parquet = write_parquet(files.join(root, "wiki", "part-0.parquet"), records, field="body")
  jsonl = write_jsonl(files.join(root, "books", "b.jsonl.gz"), records[:-2], field="body")
  with files.open(parquet, "rb") as f:
    assert pq.ParquetFile(f).num_row_groups == 4  # read one row group at a time
  want = [text_readers.split_sentences(t) for t in records if t and t.strip()]
  assert sum(map(len, want)) > 2 * len(want)  # records are split into sentences
  source = text_sources.TextFiles((parquet, jsonl), (), text_field="body")
  assert list(source.documents(TRAIN)) == want + want[:-2]
  assert inputs.tokenizer_files(source, files.join(root, "corpus")) == [
      files.join(root, "corpus", "tokenizer_sample.txt")]  # not the binary files themselves
  # A mixture over the bucket's globs, and a split carved from it, read the same way.
  data = load("tiny").data
  data.update(demo_corpus=False, text_field="body", valid_fraction=0.3,
              sources=f"{files.join(root, 'wiki', '*.parquet')}@2,"
                      f"{files.join(root, 'books', '*.jsonl.gz')}@1")
  carved = inputs.corpus_source(Corpus.of(data), corpus_dir="")
  train, valid = list(carved.documents(TRAIN)), list(carved.documents(VALIDATION))
  assert train and valid and sorted(train + valid) == sorted(carved.source.documents(TRAIN))


def test_bad_records_name_the_file_and_the_field(tmp_path, texts):
  good = write_parquet(str(tmp_path / "good.parquet"), texts[:3])
  with pytest.raises(KeyError, match=r"good.parquet: no text field 'body'; columns: \['id', "
                                     r"'text'\]"):
    text_readers.check_file(good, "body")
  with pytest.raises(ValueError, match="good.parquet: column 'id' holds int64, not text"):
    text_readers.check_file(good, "id")
  fake = tmp_path / "fake.parquet"
  fake.write_text("not parquet")
  with pytest.raises(ValueError, match="fake.parquet: cannot read as Parquet"):
    text_readers.check_file(str(fake))
  lines = tmp_path / "bad.jsonl"
  lines.write_text('{"text": "Fine."}\n\n{"text": "Also fine."}\n{"text": \n')
  with pytest.raises(ValueError, match="bad.jsonl: line 4 is not JSON"):
    list(text_readers.read_documents(str(lines)))
  lines.write_text('{"text": "Fine."}\n{"title": "t"}\n')
  with pytest.raises(KeyError, match=r"bad.jsonl: line 2: no text field 'text'; fields: "
                                     r"\['title'\]"):
    list(text_readers.read_documents(str(lines)))
  lines.write_text('{"text": ["a list"]}\n')
  with pytest.raises(ValueError, match="bad.jsonl: line 1: field 'text' holds list"):
    list(text_readers.read_documents(str(lines)))

  # Through the config: checked before anything is built, naming the field.
  c = load("tiny")
  c.data.update(demo_corpus=False, train_files=good, valid_files=good, text_field="body")
  with pytest.raises(ValueError, match=r"data.text_field='body': .*good.parquet: no text field"):
    inputs.corpus_source(Corpus.of(c.data), corpus_dir="")
  c.data.update(text_field="text", valid_files=str(fake))
  with pytest.raises(ValueError, match="data.valid_files: .*fake.parquet: cannot read"):
    inputs.corpus_source(Corpus.of(c.data), corpus_dir="")


# --------------------------------------------------------------- mixtures ---
def _chars(doc):
  return sum(map(len, doc))


@pytest.fixture(scope="module")
def mixture_files(tmp_path_factory):
  """Three sources of different document lengths: short, long, medium."""
  d = tmp_path_factory.mktemp("mixture")
  a = write_parquet(str(d / "a.parquet"), synthetic_texts(0, 3000, length=(3, 12)),
                    row_group_size=500)
  b = write_jsonl(str(d / "b.jsonl"), synthetic_texts(1, 300, sentences=(5, 40)))
  c = str(d / "c.txt")
  docs = [text_readers.split_sentences(t) for t in synthetic_texts(2, 800)]
  with open(c, "w") as f:
    f.write("\n\n".join("\n".join(doc) for doc in docs) + "\n")
  return a, b, c


def _mixture(paths, weights):
  parts = tuple(text_sources.TextFiles((p,), ()) for p in paths)
  return text_sources.Mixture(parts, tuple(weights))


@pytest.mark.parametrize("weights", [(0.5, 0.3, 0.2), (0.1, 0.1, 0.8)])
def test_mixture_holds_the_weights_repeating_or_sampling_each_source(mixture_files, weights):
  """The split is as long as the sources together; each source gets its weight of it,
  read in its own order and from its start again when it runs out (epochs > 1), or in
  part (epochs < 1)."""
  mixture = _mixture(mixture_files, weights)
  per_source = [list(text_readers.read_documents(p)) for p in mixture_files]
  sizes = np.array([sum(_chars(d) for d in docs) for docs in per_source], float)
  origin = {tuple(doc): i for i, docs in enumerate(per_source) for doc in docs}
  stream = list(mixture.documents(TRAIN))
  longest = max(_chars(doc) for docs in per_source for doc in docs)
  taken, total = np.zeros(3), 0
  for n, doc in enumerate(stream, 1):
    taken[origin[tuple(doc)]] += _chars(doc)
    total += _chars(doc)
    if 100 <= n <= 0.9 * len(stream):  # every prefix holds each share to within a document
      assert np.all(np.abs(taken / total - weights) <= longest / total + 1e-12), n
  assert abs(total - sizes.sum()) <= 3 * longest  # as long as the sources together
  epochs = taken / sizes
  np.testing.assert_allclose(epochs, np.array(weights) / (sizes / sizes.sum()),
                             atol=3 * longest / sizes.min())
  for i, docs in enumerate(per_source):  # each source in its own order, cycling
    mine = [doc for doc in stream if origin[tuple(doc)] == i]
    assert mine == (docs * (len(mine) // len(docs) + 1))[:len(mine)], i
  used = mixture.used
  assert [u["documents"] for u in used] == [
      sum(origin[tuple(doc)] == i for doc in stream) for i in range(3)]
  np.testing.assert_allclose([u["epochs"] for u in used], epochs, rtol=1e-3)
  np.testing.assert_allclose([u["natural_share"] for u in used], sizes / sizes.sum(), atol=1e-5)
  np.testing.assert_allclose([u["share"] for u in used], weights, atol=2 * longest / total)
  assert max(epochs) > 1 > min(epochs)  # one source repeated, one sampled: both happen here
  # Deterministic: the same stream on every pass; relative weights.
  assert list(_mixture(mixture_files, weights).documents(TRAIN)) == stream
  assert list(_mixture(mixture_files, tuple(10 * w for w in weights)).documents(TRAIN)) == stream


def test_mixture_config_syntax_and_validation():
  assert config_fields.mixture_sources(" gs://b/w/*.parquet@0.7, /d/books-*.txt.gz@3e-1 ") == [
      ("gs://b/w/*.parquet", 0.7), ("/d/books-*.txt.gz", 0.3)]
  assert config_fields.mixture_sources("/a@b/x.txt@1") == [("/a@b/x.txt", 1.0)]
  for bad in ("/d/a.txt", "@0.5", "/d/a.txt@0", "/d/a.txt@-1", "/d/a.txt@x", "/d/a.txt@inf",
              "/d/a.txt@0.5,"):
    with pytest.raises(ValueError, match="data.sources: .* is not PATTERN@WEIGHT"):
      config_fields.mixture_sources(bad)
  cases = [
      (dict(sources="/d/a.txt"), "data.sources: '/d/a.txt' is not PATTERN@WEIGHT"),
      (dict(sources="/d/a.txt@1", train_files="/d/b.txt"),
       "set data.sources .* or data.train_files, not both"),
      (dict(sources="/d/a.txt@1", tfds_name="wiki"), "or data.tfds_name, not both"),
      (dict(sources="/d/a.txt@1", demo_corpus=True), "or data.demo_corpus, not both"),
      (dict(train_files="/d/b.txt", demo_corpus=True),
       r"set data.train_files or data.demo_corpus, not both \(configs/tiny.py .*"
       r"--config.data.demo_corpus=False\)"),
      (dict(train_files="/d/b.txt", tfds_name="wiki"),
       "set data.train_files or data.tfds_name, not both"),
      (dict(valid_fraction=1.0), r"data.valid_fraction must be in \[0, 1\)"),
      (dict(valid_fraction=-0.1), "data.valid_fraction must be"),
      (dict(valid_fraction=0.1, valid_files="/d/v.txt"),
       "set data.valid_files or data.valid_fraction"),
  ]
  for fields, match in cases:
    c = load("tiny")  # demo_corpus=True
    c.data.update(**{"demo_corpus": False, **fields})
    with pytest.raises(ValueError, match=match):
      config_checks.validate(c)


def test_mixture_inputs_are_checked_before_any_work(mixture_files, tmp_path):
  a, b, _ = mixture_files
  empty = tmp_path / "empty.txt"
  empty.write_text("\n\n")
  c = load("tiny")
  c.data.update(demo_corpus=False, sources=f"{a}@1,{tmp_path}/none-*.txt@1")
  with pytest.raises(FileNotFoundError, match=r"data.sources \(.*none-\*.txt\): no file matches"):
    inputs.corpus_source(Corpus.of(c.data), "")
  c.data.sources = f"{a}@1,{empty}@1"
  with pytest.raises(ValueError, match="data.sources: .*empty.txt' holds no document"):
    inputs.corpus_source(Corpus.of(c.data), "")
  c.data.sources = f"{a}@1,{b}@1"
  with pytest.raises(ValueError, match="data.valid_files must be set when data.sources is "
                                       r"\(or data.valid_fraction > 0"):
    inputs.corpus_source(Corpus.of(c.data), "")
  c.data.valid_files = b
  source = inputs.corpus_source(Corpus.of(c.data), "")
  assert isinstance(source, text_sources.Mixture) and source.weights == (1.0, 1.0)
  assert list(source.documents(VALIDATION)) == list(text_readers.read_documents(b))


# ------------------------------------------------------------------ carve ---
def test_carved_split_is_disjoint_identical_across_builds_and_order_free(mixture_files, tmp_path):
  a, b, c = mixture_files
  fraction = 0.2
  carved = text_sources.Carved(text_sources.TextFiles((a, b, c), ()), fraction)
  everything = list(text_sources.TextFiles((a, b, c), ()).documents(TRAIN))
  train, valid = list(carved.documents(TRAIN)), list(carved.documents(VALIDATION))
  assert sorted(train + valid) == sorted(everything)  # together: every document once
  assert not {tuple(d) for d in train} & {tuple(d) for d in valid}  # disjoint
  n = len(everything)  # a hash below `fraction`: binomial(n, fraction)
  assert abs(len(valid) - fraction * n) <= 4 * (n * fraction * (1 - fraction)) ** 0.5
  # Another order of the files (or another mixture of them) carves the same documents.
  other = text_sources.Carved(text_sources.TextFiles((c, b, a), ()), fraction)
  assert sorted(other.documents(VALIDATION)) == sorted(valid)
  # Two builds: the same dataset name (fingerprint) and the same records.
  tok_path = tokenizer_lib.train_tokenizer([c], VOCAB, str(tmp_path / "spm"))
  built = [text_builder.build_from_source(
      text_sources.Carved(text_sources.TextFiles((a, c), ()), fraction), tok_path,
      str(tmp_path / f"out{i}")) for i in range(2)]
  assert os.path.basename(built[0]) == os.path.basename(built[1])
  for split in (TRAIN, VALIDATION):
    x, y = (text_builder.open_split(path, split) for path in built)
    assert len(x) == len(y) > 0
    for i in range(len(x)):
      np.testing.assert_array_equal(x[i]["ids"], y[i]["ids"])
  meta = text_builder.load_corpus_meta(built[0])
  assert meta["source"]["kind"] == "carved" and meta["source"]["valid_fraction"] == fraction


# ------------------------------------------------------------------- TFDS ---
class TinyWikiDs(tfds.core.GeneratorBasedBuilder):
  """A TFDS text dataset with a train split only, as many are."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
        {"text": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, text in enumerate(synthetic_texts(3, 40)):
      yield i, {"text": text}


def _refuse(*args, **kwargs):
  raise AssertionError("started long work before the inputs were checked")


def test_tfds_splits_are_checked_before_anything_runs(tmp_path, monkeypatch):
  src = str(tmp_path / "tfds")
  TinyWikiDs(data_dir=src, file_format="array_record").download_and_prepare()
  c = load("tiny")
  c.model.vocab_size = VOCAB
  c.data.update(demo_corpus=False, tfds_name="tiny_wiki_ds", tfds_data_dir=src)
  monkeypatch.setattr(tokenizer_lib, "train_tokenizer", _refuse)
  monkeypatch.setattr(text_builder, "build_from_source", _refuse)
  with pytest.raises(ValueError, match=r"data.tfds_valid_split='validation': .*Unknown split "
                                       r".*the splits of TFDS dataset 'tiny_wiki_ds': \['train'\]"
                                       r"; or set data.valid_fraction"):
    prepare_lib.prepare(c, str(tmp_path / "out"), say=lambda line: None)
  c.data.update(tfds_train_split="training[:90%]", tfds_valid_split="train[90%:]")
  with pytest.raises(ValueError, match=r"data.tfds_train_split='training\[:90%\]'"):
    inputs.corpus_source(Corpus.of(c.data), "")
  c.data.update(tfds_name="no_such_dataset_xyz")
  with pytest.raises(ValueError, match="data.tfds_name='no_such_dataset_xyz': .*not found"):
    inputs.corpus_source(Corpus.of(c.data), "")
  c.data.update(tfds_name="tiny_wiki_ds", tfds_data_dir=str(tmp_path / "elsewhere"))
  with pytest.raises(ValueError, match="data.tfds_name='tiny_wiki_ds' is not prepared in"):
    inputs.corpus_source(Corpus.of(c.data), "")
  assert not (tmp_path / "out").exists()
  monkeypatch.undo()

  # Sliced splits pass; a dataset without a validation split is carved.
  c.data.update(tfds_data_dir=src, tfds_train_split="train[:30]", tfds_valid_split="train[30:]")
  assert isinstance(inputs.corpus_source(Corpus.of(c.data), ""), text_sources.TfdsText)
  c.data.update(tfds_train_split="train", tfds_valid_split="validation", valid_fraction=0.25)
  result = prepare_lib.prepare(c, str(tmp_path / "carved"), workers=1, say=lambda line: None)
  splits = result["splits"]
  assert splits["train"]["documents"] + splits["validation"]["documents"] == 40
  assert splits["validation"]["documents"] > 0
  recipe = text_builder.load_corpus_meta(result["output"])["prepared"]["recipe"]
  assert recipe["data.valid_fraction"] == 0.25 and "data.tfds_valid_split" not in recipe


def test_a_tfds_dataset_in_a_mixture(mixture_files, tmp_path, monkeypatch):
  """'tfds:NAME@W' beside file patterns (the paper's Wikipedia + books): its
  data.tfds_train_split is read, the weights hold as for files, its split is checked
  before any work, and prepare builds it and records what the TFDS member read."""
  src = str(tmp_path / "tfds")
  TinyWikiDs(data_dir=src, file_format="array_record").download_and_prepare()
  books = mixture_files[2]
  c = tiny_config(sources=f"tfds:tiny_wiki_ds@0.5,{books}@0.5", tfds_data_dir=src,
                  valid_fraction=0.25)
  source = inputs.corpus_source(Corpus.of(c.data), "")
  mix = source.source
  assert isinstance(mix, text_sources.Mixture)
  assert isinstance(mix.parts[0], text_sources.TfdsText) and mix.parts[0].train_split == "train"
  wiki = list(mix.parts[0].documents(TRAIN))
  stream = list(mix.documents(TRAIN))
  from_wiki = [doc for doc in stream if doc in wiki]
  cycled = wiki * (len(from_wiki) // len(wiki) + 1)  # the small member repeats (epochs > 1)
  assert from_wiki == cycled[:len(from_wiki)] and 0 < len(from_wiki) < len(stream)
  assert list(inputs.corpus_source(Corpus.of(c.data), "").source.documents(TRAIN)) == stream
  # A split the member lacks, or no name, is refused naming the member and the field.
  c.data.tfds_train_split = "training"
  monkeypatch.setattr(text_builder, "build_from_source", _refuse)
  with pytest.raises(ValueError, match=r"data.tfds_train_split='training'.*tiny_wiki_ds"):
    prepare_lib.prepare(c, str(tmp_path / "bad"), say=lambda line: None)
  with pytest.raises(ValueError, match=r"data.sources: 'tfds:@1' names no TFDS dataset"):
    config_fields.mixture_sources(f"tfds:@1,{books}@1")
  monkeypatch.undo()
  assert not (tmp_path / "bad").exists()
  c.data.tfds_train_split = "train[:30]"
  result = prepare_lib.prepare(c, str(tmp_path / "out"), workers=1, say=lambda line: None)
  recipe = text_builder.load_corpus_meta(result["output"])["prepared"]["recipe"]
  assert recipe["data.sources"] == f"tfds:tiny_wiki_ds@0.5,{books}@0.5"
  assert recipe["data.tfds_train_split"] == "train[:30]"
  assert list(recipe["files of data.sources"]) == [os.path.abspath(books)]
  assert result["splits"]["train"]["documents"] > 0 and result["splits"]["validation"]["documents"] > 0
  assert result["mixture"][0]["files"] == "tfds:tiny_wiki_ds split 'train[:30]'"


# ---------------------------------------------------------- prepare->train ---
def tiny_config(**data):
  """`tiny` with a small tokenizer and model, for 2 steps (as in tests/test_prepare.py)."""
  c = load("tiny", "none")
  c.model.update(vocab_size=VOCAB, hidden_size=32, num_layers=2, intermediate_size=64)
  c.data.update(demo_corpus=False, **data)
  c.train.update(num_steps=2, log_every=1, eval_every=2, eval_batches=1, checkpoint_every=2,
                 async_checkpoint=False)
  return c


@pytest.fixture(scope="module")
def mixture(texts, tmp_path_factory):
  """Prose as Parquet (2 files, 'Wikipedia') and JSON lines ('books'), prepared as a
  0.6/0.4 mixture with a fifth of it carved for validation."""
  d = tmp_path_factory.mktemp("prepare_mixture")
  half = len(texts) // 2
  for i in range(2):
    write_parquet(str(d / "wiki" / f"part-{i}.parquet"), texts[i:half:2])
  books = write_jsonl(str(d / "books" / "books.jsonl.gz"), texts[half:])
  sources = f"{d}/wiki/*.parquet@0.6,{books}@0.4"
  out = str(d / "prepared")
  config = tiny_config(sources=sources, valid_fraction=0.2)
  return config, prepare_lib.prepare(config, out, workers=1, say=lambda line: None)


def test_prepare_a_mixture(mixture):
  config, result = mixture
  out, sources = result["output"], config.data.sources
  recipe = text_builder.load_corpus_meta(out)["prepared"]["recipe"]
  assert recipe["data.sources"] == sources
  assert len(recipe["files of data.sources"]) == 3
  assert recipe["data.valid_fraction"] == 0.2 and recipe["data.text_field"] == "text"
  used = result["mixture"]
  assert [u["weight"] for u in used] == [0.6, 0.4]
  np.testing.assert_allclose([u["share"] for u in used], [0.6, 0.4], atol=0.05)
  np.testing.assert_allclose([u["epochs"] for u in used],
                             [0.6 / u["natural_share"] if i == 0 else 0.4 / u["natural_share"]
                              for i, u in enumerate(used)], rtol=0.1)
  lines = prepare_lib.report(result)
  assert any(line.lstrip().startswith("source 1") and "weight 0.4" in line for line in lines)
  # Validation is carved from the mixture: disjoint from train.
  train, valid = (text_builder.open_split(out, s) for s in (TRAIN, VALIDATION))
  keys = [{tuple(split[i]["ids"].tolist()) for i in range(len(split))} for split in (train, valid)]
  assert keys[0] and keys[1] and not keys[0] & keys[1]
  # Reruns: the same mixture does nothing; another weight or fraction is refused, named.
  assert "nothing to do" in prepare_lib.prepare(config, out, say=lambda line: None)["status"]
  for fields, match in ((dict(sources=sources.replace("@0.4", "@0.5")),
                         r"data.sources: .*@0.5 now, .*@0.4 when it was prepared"),
                        (dict(valid_fraction=0.1), "data.valid_fraction: 0.1 now, 0.2 when")):
    with pytest.raises(ValueError, match=match):
      prepare_lib.prepare(tiny_config(**{"sources": sources, "valid_fraction": 0.2, **fields}),
                          out, say=lambda line: None)


@pytest.mark.slow
def test_train_on_a_prepared_mixture(mixture, tmp_path):
  from tokendrop_jax.training import loop
  out = mixture[1]["output"]
  summary = loop.train_and_evaluate(tiny_config(dataset_dir=out), str(tmp_path / "run"))
  assert summary["step"] == 2 and np.isfinite(summary["eval/loss"])
