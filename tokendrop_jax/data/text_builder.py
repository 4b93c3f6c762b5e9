"""Tokenized text corpus as a TFDS dataset in ArrayRecord files (no TensorFlow).

Sources (local or gs://), each a stream of documents (lists of sentences):
  * `TextFiles`: paths or globs; the format is chosen by the file name:
    .txt / .txt.gz (or any other name): one sentence per line, a blank line
    between documents; .jsonl / .json (optionally .gz): one JSON object per
    line, a document per record; .parquet: a document per row, read one row
    group at a time. Records' text (field `text_field`) is split into sentences
    at line breaks and sentence ends.
  * `TfdsText`: any TFDS text dataset by name and text field (records split
    into sentences in the same way).
  * `Mixture`: the train documents of several sources interleaved by weight.
  * `Carved`: a validation split carved from a source's train documents.
Each stored example is one document:

  ids               int32[n_tokens]     the document's sentences, concatenated
  sentence_lengths  int32[n_sentences]  sum == n_tokens, every entry > 0

`build_corpus` / `build_corpus_from_tfds` write everything into a temporary
directory beside the target and rename it at the end, so a dataset directory
either is complete or does not exist. A target in a bucket (gs://) is built in
a local temporary directory and uploaded with corpus_meta.json last; readers
take a dataset as finished only once that file is there, and read a bucket's
dataset from a local copy (`files.local_copy`: ArrayRecord reads local files). Beside the TFDS files it holds
`token_counts.npy` (int64[vocab], train split, for the `frequency` strategy),
`corpus_meta.json` (vocab size, special ids, sizes, source fingerprint) and a
copy of the tokenizer as `tokenizer.model` (SentencePiece) or `tokenizer.json` (WordPiece).

Tokenizing is the slow part of a large build. With `workers > 1` chunks of
documents are tokenized in a pool of processes while this one reads the
source and writes the records in source order, so the dataset is the same,
byte for byte, whatever the number of workers.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from tokendrop_jax import files
from tokendrop_jax.data import tokenizer as tokenizer_lib
from tokendrop_jax.importance import count_token_ids

TRAIN, VALIDATION = "train", "validation"
META_FILE = "corpus_meta.json"
COUNTS_FILE = "token_counts.npy"
TOKENIZER_FILE = "tokenizer.model"  # a WordPiece dataset has tokenizer.json (tok.file_name)
_FORMAT_VERSION = 1
_ENCODE_CHUNK = 8192  # sentences per sentencepiece batch call

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")

# progress(split, documents_written, tokens_written), called after each chunk.
Progress = Callable[[str, int, int], None]


# ---------------------------------------------------------------- sources ---
@dataclasses.dataclass(frozen=True)
class TextFiles:
  """Files (local or gs://) of text, JSON lines or Parquet; `file_format` tells which."""
  train: tuple[str, ...]
  validation: tuple[str, ...]
  text_field: str = "text"  # of .jsonl/.json records and .parquet columns

  def documents(self, split: str) -> Iterator[list[str]]:
    for path in (self.train if split == TRAIN else self.validation):
      yield from read_documents(path, self.text_field)

  def structured(self) -> bool:
    """Whether any file is read by `text_field` (plain-text files are not)."""
    return any(file_format(p) != "text" for p in self.train + self.validation)

  # Plain-text files describe and fingerprint as before `text_field` existed, so
  # their datasets keep their names and bytes.
  def describe(self) -> dict:
    out = {"kind": "text_files", "train": list(self.train), "validation": list(self.validation)}
    return {**out, "text_field": self.text_field} if self.structured() else out

  def fingerprint_items(self) -> list:
    items = [(files.resolve(p), *files.size_and_mtime(p))
             for p in self.train + self.validation] + [len(self.train)]
    return items + [self.text_field] if self.structured() else items


@dataclasses.dataclass(frozen=True)
class TfdsText:
  """A TFDS dataset prepared in ArrayRecord format, read with `tfds.data_source`."""
  name: str
  text_field: str
  train_split: str = "train"
  validation_split: str = "validation"
  data_dir: str | None = None

  def documents(self, split: str) -> Iterator[list[str]]:
    tfds_split = self.train_split if split == TRAIN else self.validation_split
    try:
      source = tfds.data_source(self.name, split=tfds_split, data_dir=self.data_dir)
    except Exception as e:  # not prepared, tfrecord-only, unknown name, ...
      raise ValueError(
          f"cannot open TFDS dataset {self.name!r} split {tfds_split!r} as a data source "
          f"(it must be prepared with file_format='array_record'): {e}") from e
    for i in range(len(source)):
      record = source[i]
      if self.text_field not in record:
        raise KeyError(f"TFDS dataset {self.name!r} has no text field {self.text_field!r}; "
                       f"fields: {sorted(record)}")
      text = record[self.text_field]
      if isinstance(text, bytes):
        text = text.decode("utf-8")
      doc = split_sentences(str(text))
      if doc:
        yield doc

  def describe(self) -> dict:
    return {"kind": "tfds", **dataclasses.asdict(self)}

  def fingerprint_items(self) -> list:
    return [self.describe()]


@dataclasses.dataclass(frozen=True)
class Mixture:
  """The train documents of several sources, mixed by weight: a weight above a source's
  natural share repeats it, a weight below samples part of it.

  A weight is a source's share of the train split's text, counted in characters
  (about proportional to tokens; documents differ in length by orders of
  magnitude between, say, Wikipedia articles and books). The split is as long as
  the sources together (their characters, counted in a first pass that does not
  tokenize), and source j gets weight_j / sum(weights) of it: a source whose share
  is larger than its natural one (its size over the total) is read again from its
  start, as many times as that takes (its epochs, >1), and one whose share is
  smaller is read only in part (epochs <1). The next document always comes from the
  source furthest below its share (ties: the one listed first), so the stream is
  the same on every run and every prefix of it holds the shares to within one
  document. `used`, filled by a complete pass, says what went in: documents,
  characters, share, natural share and epochs of each source. Validation
  documents come from `validation` (read for its validation split), or from a
  `Carved` around the mixture.
  """
  parts: tuple  # sources, each read for its train split
  weights: tuple[float, ...]
  validation: TextFiles | None = None
  used: list = dataclasses.field(default_factory=list, compare=False, repr=False)
  sizes: list = dataclasses.field(default_factory=list, compare=False, repr=False)

  def _sizes(self) -> list[int]:
    """Characters of each source's train documents (one pass, cached)."""
    if not self.sizes:
      self.sizes[:] = [sum(sum(map(len, doc)) for doc in part.documents(TRAIN))
                       for part in self.parts]
    return self.sizes

  def documents(self, split: str) -> Iterator[list[str]]:
    if split == VALIDATION:
      if self.validation is None:
        raise ValueError("this mixture has no validation files; carve a validation split "
                         "from it (Carved)")
      yield from self.validation.documents(VALIDATION)
      return
    sizes = self._sizes()
    for part, size in zip(self.parts, sizes):
      if not size:
        raise ValueError(f"a source of the mixture has no text: {part.describe()}")
    total, weight_sum = sum(sizes), sum(self.weights)
    targets = [w / weight_sum * total for w in self.weights]
    streams = [part.documents(TRAIN) for part in self.parts]
    taken = [0] * len(streams)  # characters taken from each source
    docs = [0] * len(streams)
    active = [j for j in range(len(streams)) if targets[j] > 0]
    while active:
      i = min(active, key=lambda j: taken[j] / self.weights[j])
      doc = next(streams[i], None)
      if doc is None:  # the end of an epoch of source i: once more from its start
        streams[i] = self.parts[i].documents(TRAIN)
        continue
      taken[i] += sum(map(len, doc))
      docs[i] += 1
      yield doc
      if taken[i] >= targets[i]:
        active.remove(i)
    mixed = max(sum(taken), 1)
    self.used[:] = [{"documents": d, "characters": c, "share": round(c / mixed, 6),
                     "natural_share": round(n / total, 6), "epochs": round(c / n, 4)}
                    for d, c, n in zip(docs, taken, sizes)]

  def describe(self) -> dict:
    out = {"kind": "mixture",
           "parts": [{"weight": w, **p.describe()} for p, w in zip(self.parts, self.weights)],
           "validation": self.validation.describe() if self.validation else None}
    return {**out, "used": self.used} if self.used else out

  def fingerprint_items(self) -> list:
    return ["mixture", [[p.fingerprint_items(), w] for p, w in zip(self.parts, self.weights)],
            self.validation.fingerprint_items() if self.validation else None]


@dataclasses.dataclass(frozen=True)
class Carved:
  """`source`'s train documents cut in two: validation gets those whose text hashes
  below `fraction` (`held_out`), train the others.

  By content, not position: the split is the same on every run and whatever the
  order or mixture of the sources, the two sides share no document, and copies
  of a document land on the same side. Each split reads the source's train
  documents once (the validation pass reads them without tokenizing them).
  """
  source: object  # any source; read for its train split
  fraction: float

  def documents(self, split: str) -> Iterator[list[str]]:
    want = split == VALIDATION
    for doc in self.source.documents(TRAIN):
      if held_out(doc, self.fraction) == want:
        yield doc

  def describe(self) -> dict:
    return {"kind": "carved", "valid_fraction": self.fraction, "from": self.source.describe()}

  def fingerprint_items(self) -> list:
    return ["carved", self.fraction, self.source.fingerprint_items()]


def held_out(doc: Sequence[str], fraction: float) -> bool:
  """Whether `doc` goes to a carved validation split: its hash as a number in [0, 1)."""
  digest = hashlib.blake2b("\n".join(doc).encode("utf-8"), digest_size=8).digest()
  return int.from_bytes(digest, "big") < fraction * 2.0**64


# ---------------------------------------------------------------- formats ---
def file_format(path: str) -> str:
  """'parquet', 'jsonl' (.jsonl/.json, optionally .gz) or 'text' (any other name)."""
  name = os.fspath(path).lower()
  if name.endswith(".parquet"):
    return "parquet"
  if name.removesuffix(".gz").endswith((".jsonl", ".json")):
    return "jsonl"
  return "text"


def read_documents(path: str, text_field: str = "text") -> Iterator[list[str]]:
  """The documents of one file (local or gs://), by its `file_format`."""
  kind = file_format(path)
  if kind == "parquet":
    texts = _parquet_texts(path, text_field)
  elif kind == "jsonl":
    texts = _jsonl_texts(path, text_field)
  else:
    yield from _text_documents(path)
    return
  for text in texts:
    doc = split_sentences(text)
    if doc:
      yield doc


def _text_documents(path: str) -> Iterator[list[str]]:
  doc = []
  for line in tokenizer_lib.read_lines(path):
    line = line.strip()
    if line:
      doc.append(line)
    elif doc:
      yield doc
      doc = []
  if doc:  # a file boundary ends a document
    yield doc


def _record_text(record, text_field: str, where: str) -> str:
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
  if text_field not in record:
    raise KeyError(f"{where}: no text field {text_field!r}; fields: {sorted(record)}")
  text = record[text_field]
  if text is not None and not isinstance(text, str):
    raise ValueError(f"{where}: field {text_field!r} holds {type(text).__name__}, not text")
  return text or ""


def _jsonl_texts(path: str, text_field: str, limit: int | None = None) -> Iterator[str]:
  n = 0
  for lineno, line in enumerate(tokenizer_lib.read_lines(path), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: line {lineno} is not JSON (JSON lines: one object per "
                       f"line): {e}") from None
    yield _record_text(record, text_field, f"{path}: line {lineno}")
    n += 1
    if limit is not None and n >= limit:
      return


def _parquet_file(f, path: str, text_field: str):
  """A pyarrow ParquetFile of the open file `f`, checked to have a text column `text_field`."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  try:
    pf = pq.ParquetFile(f)
  except (pa.ArrowException, OSError) as e:
    raise ValueError(f"{path}: cannot read as Parquet: {e}") from None
  schema = pf.schema_arrow
  if text_field not in schema.names:
    raise KeyError(f"{path}: no text field {text_field!r}; columns: {schema.names}")
  kind = schema.field(text_field).type
  if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
          or pa.types.is_string_view(kind)):
    raise ValueError(f"{path}: column {text_field!r} holds {kind}, not text")
  return pf


def _parquet_texts(path: str, text_field: str) -> Iterator[str]:
  """The text column, one row group at a time (a file may be larger than memory)."""
  with files.open(path, "rb") as f:
    pf = _parquet_file(f, path, text_field)
    for group in range(pf.num_row_groups):
      for text in pf.read_row_group(group, columns=[text_field]).column(0).to_pylist():
        if text:
          yield text


def check_file(path: str, text_field: str = "text") -> None:
  """Fails (naming the file) if a .jsonl/.parquet file lacks a text field `text_field`.

  Cheap: a Parquet file's footer, a JSON-lines file's first record. Plain text
  is not read here.
  """
  kind = file_format(path)
  if kind == "parquet":
    with files.open(path, "rb") as f:
      _parquet_file(f, path, text_field)
  elif kind == "jsonl":
    for _ in _jsonl_texts(path, text_field, limit=1):
      pass


def split_sentences(text: str) -> list[str]:
  """Free text -> sentences: at line breaks, then after . ! ? before a capital."""
  out = []
  for line in text.splitlines():
    line = line.strip()
    if line:
      out.extend(s for s in _SENTENCE_END.split(line) if s.strip())
  return out


# ---------------------------------------------------------------- builder ---
class TokendropTextCorpus(tfds.core.GeneratorBasedBuilder):
  """Tokenized documents (ids + sentence lengths), train/validation splits."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Token ids and sentence lengths per document."}

  def __init__(self, *, source: TextFiles | TfdsText, tokenizer: tokenizer_lib.Tokenizer,
               workers: int = 1, progress: Progress | None = None, **kwargs):
    self._source = source
    self._tokenizer = tokenizer
    self._workers = workers
    self._progress = progress
    self.token_counts = np.zeros((tokenizer.vocab_size,), np.int64)
    self.split_sizes: dict[str, dict[str, int]] = {}
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # Built directly: dataset_info_from_configs() needs the builder in a package.
    ids = lambda: tfds.features.Tensor(  # noqa: E731
        shape=(None,), dtype=np.int32, encoding=tfds.features.Encoding.BYTES)
    return tfds.core.DatasetInfo(
        builder=self,
        description="Tokenized text documents for masked-LM pretraining.",
        features=tfds.features.FeaturesDict({"ids": ids(), "sentence_lengths": ids()}),
        disable_shuffling=True,  # keep source order; the input pipeline shuffles
    )

  # TFDS prints these to stdout; here they would name the temporary directory.
  def _log_download_bytes(self) -> None:
    logging.info("Building %s in %s", self.name, self.data_dir)

  def _log_download_done(self) -> None:
    logging.info("Built %s in %s", self.name, self.data_dir)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {TRAIN: self._generate_examples(TRAIN),
            VALIDATION: self._generate_examples(VALIDATION)}

  def _generate_examples(self, split: str):
    n_docs = n_tokens = n_empty = n_special = 0
    chunks = _chunks(self._source.documents(split), _ENCODE_CHUNK)
    for chunk in encode_chunks(self._tokenizer, chunks, self._workers):
      n_empty += chunk.empty
      n_special += chunk.special_only
      if split == TRAIN:
        self.token_counts += chunk.counts
      for ids, lengths in chunk.docs:
        yield n_docs, {"ids": ids, "sentence_lengths": lengths}
        n_docs += 1
        n_tokens += len(ids)
      if self._progress:
        self._progress(split, n_docs, n_tokens)
    if not n_docs:
      raise ValueError(f"empty corpus: split {split!r} of {self._source.describe()} has no "
                       "tokens")
    self.split_sizes[split] = {"documents": n_docs, "tokens": n_tokens}
    if n_empty or n_special:
      logging.warning("%s split: skipped %d document(s) with no tokens and %d of only special "
                      "tokens", split, n_empty, n_special)
      self.split_sizes[split].update(skipped_empty_documents=n_empty,
                                     skipped_special_only_documents=n_special)


def _chunks(docs: Iterable[list[str]], max_sentences: int) -> Iterator[list[list[str]]]:
  chunk, n = [], 0
  for doc in docs:
    chunk.append(doc)
    n += len(doc)
    if n >= max_sentences:
      yield chunk
      chunk, n = [], 0
  if chunk:
    yield chunk


def tokenize_documents(tok: tokenizer_lib.Tokenizer, docs: Sequence[Sequence[str]],
                       num_threads: int = -1) -> list[tuple[np.ndarray, np.ndarray]]:
  """Documents (lists of sentences) -> [(ids int32[n], sentence_lengths int32[k])].

  One batched sentencepiece call for all sentences; sentences that encode to no
  token are dropped, and so are documents left empty.
  """
  flat = [s for d in docs for s in d]
  encoded = tok.encode_batch(flat, num_threads=num_threads)
  # All ids in one array, built in C (a generator over every id would run in Python).
  lengths = np.fromiter(map(len, encoded), np.int32, len(encoded))
  all_ids = np.fromiter(itertools.chain.from_iterable(encoded), np.int32, int(lengths.sum()))
  starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
  out, i = [], 0
  for d in docs:
    doc_lengths = lengths[i:i + len(d)]
    doc_lengths = doc_lengths[doc_lengths > 0]
    if doc_lengths.size:
      out.append((all_ids[starts[i]:starts[i + len(d)]].copy(), doc_lengths))
    i += len(d)
  return out


@dataclasses.dataclass
class EncodedChunk:
  """The documents of one chunk as stored, and what was left out of them."""
  docs: list[tuple[np.ndarray, np.ndarray]]  # (ids, sentence_lengths), source order
  empty: int          # documents that encoded to no token
  special_only: int   # documents of special ids only (e.g. only unknown characters)
  counts: np.ndarray  # int64[vocab]: token-id counts of `docs`


def encode_chunk(tok: tokenizer_lib.Tokenizer, docs: Sequence[Sequence[str]],
                 num_threads: int = -1) -> EncodedChunk:
  """`tokenize_documents`, less the documents of special ids only, with their counts."""
  encoded = tokenize_documents(tok, docs, num_threads)
  special = np.asarray(tok.special_ids)
  kept = [(ids, lengths) for ids, lengths in encoded if not np.isin(ids, special).all()]
  all_ids = [np.concatenate([ids for ids, _ in kept])] if kept else []
  return EncodedChunk(kept, len(docs) - len(encoded), len(encoded) - len(kept),
                      count_token_ids(all_ids, tok.vocab_size))


_worker_tokenizer: tokenizer_lib.Tokenizer | None = None


def _init_worker(tok: tokenizer_lib.Tokenizer) -> None:
  global _worker_tokenizer
  _worker_tokenizer = tok


def _encode_in_worker(docs: list[list[str]]) -> EncodedChunk:
  return encode_chunk(_worker_tokenizer, docs, num_threads=1)  # the pool is the parallelism


def encode_chunks(tok: tokenizer_lib.Tokenizer, chunks: Iterable[list[list[str]]],
                  workers: int = 1) -> Iterator[EncodedChunk]:
  """`encode_chunk` of each chunk, in order; with `workers > 1` in a process pool.

  At most 2 * workers chunks are in flight, so memory stays bounded on a corpus
  of any size. A source of a single chunk is encoded here (a pool would only
  cost its start-up). Workers are spawned, not forked: this process may hold
  threads (JAX, sentencepiece) that a fork would copy in an undefined state.
  """
  chunks = iter(chunks)
  head = list(itertools.islice(chunks, 2))
  if workers <= 1 or len(head) < 2:
    for docs in itertools.chain(head, chunks):
      yield encode_chunk(tok, docs)
    return
  pool = concurrent.futures.ProcessPoolExecutor(
      workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
      initargs=(tok,))
  try:
    pending = collections.deque()
    for docs in itertools.chain(head, chunks):
      pending.append(pool.submit(_encode_in_worker, docs))
      if len(pending) >= 2 * workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------- build/load ---
def build_corpus(train_files: Sequence[str] | str, valid_files: Sequence[str] | str,
                 tokenizer: tokenizer_lib.Tokenizer | str, data_dir: str, *,
                 name: str | None = None, workers: int = 1, progress: Progress | None = None,
                 extra_meta: dict | None = None) -> str:
  """Tokenizes text files into `data_dir/<name>` (reused if already built) -> its path.

  `name` defaults to `corpus-<fingerprint>` of the files (path, size, mtime) and
  the tokenizer, so a changed input builds a new dataset instead of reusing.
  `workers`: processes that tokenize (the output does not depend on it; a
  script passing more than 1 needs an `if __name__ == "__main__"` guard, as
  for any spawned pool). `progress`: called after each chunk. `extra_meta`:
  more entries for corpus_meta.json.
  """
  source = TextFiles(train=tuple(tokenizer_lib.expand_files(train_files, "train_files")),
                     validation=tuple(tokenizer_lib.expand_files(valid_files, "valid_files")))
  return build_from_source(source, tokenizer, data_dir, name=name, workers=workers,
                           progress=progress, extra_meta=extra_meta)


def build_corpus_from_tfds(tfds_name: str, text_field: str,
                           tokenizer: tokenizer_lib.Tokenizer | str, data_dir: str, *,
                           train_split: str = "train", valid_split: str = "validation",
                           tfds_data_dir: str | None = None, name: str | None = None,
                           workers: int = 1, progress: Progress | None = None,
                           extra_meta: dict | None = None) -> str:
  """Like `build_corpus`, from an ArrayRecord TFDS dataset, e.g.

    build_corpus_from_tfds('wikipedia/20230601.en', 'text', tok, dir,
                           train_split='train[:99%]', valid_split='train[99%:]')
  """
  source = TfdsText(tfds_name, text_field, train_split, valid_split, tfds_data_dir)
  return build_from_source(source, tokenizer, data_dir, name=name, workers=workers,
                           progress=progress, extra_meta=extra_meta)


def _fingerprint(source, tok: tokenizer_lib.Tokenizer) -> str:
  h = hashlib.sha256()
  h.update(json.dumps([_FORMAT_VERSION, str(TokendropTextCorpus.VERSION),
                       source.fingerprint_items()]).encode())
  # SentencePiece: its proto, as datasets built before WordPiece were fingerprinted.
  h.update(tok.serialized_model_proto() if tok.kind == tokenizer_lib.SENTENCEPIECE
           else tok.serialized())
  return h.hexdigest()


def _check_nonempty(source) -> None:
  """Fails early, before the train split is tokenized, on a split with no document."""
  for split in (TRAIN, VALIDATION):
    if next(iter(source.documents(split)), None) is None:
      raise ValueError(f"{split} split: empty corpus: no document in {source.describe()}")


def build_from_source(source, tokenizer: tokenizer_lib.Tokenizer | str, data_dir: str, *,
                      name: str | None = None, workers: int = 1,
                      progress: Progress | None = None, extra_meta: dict | None = None) -> str:
  """Like `build_corpus`, from any source (`TextFiles`, `TfdsText`, `Mixture`, `Carved`)."""
  tok = (tokenizer_lib.load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike))
         else tokenizer)
  fingerprint = _fingerprint(source, tok)
  name = name or f"corpus-{fingerprint[:12]}"
  final = files.join(files.resolve(data_dir), name)
  if files.exists(final):
    meta = load_corpus_meta(final)
    if meta.get("fingerprint") != fingerprint:
      raise ValueError(f"{final} exists but was built from other inputs or another tokenizer; "
                       "remove it or pick another name")
    return final
  remote = files.is_remote(final)
  if not remote:
    os.makedirs(data_dir, exist_ok=True)
  _check_nonempty(source)
  tmp = tempfile.mkdtemp(dir=None if remote else data_dir, prefix=f".tmp-{name}-")
  try:
    builder = TokendropTextCorpus(source=source, tokenizer=tok, workers=workers,
                                  progress=progress, data_dir=tmp, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
    out = builder.data_dir  # tmp/<builder name>/<version>
    np.save(os.path.join(out, COUNTS_FILE), builder.token_counts)
    with open(os.path.join(out, tok.file_name), "wb") as f:
      f.write(tok.serialized())
    meta = {
        "format_version": _FORMAT_VERSION,
        "fingerprint": fingerprint,
        "vocab_size": tok.vocab_size,
        "special_ids": {"pad_id": tok.pad_id, "unk_id": tok.unk_id, "cls_id": tok.cls_id,
                        "sep_id": tok.sep_id, "mask_id": tok.mask_id},
        "splits": builder.split_sizes,
        "source": source.describe(),
        "tokenizer": files.resolve(tok.model_path),
        **(extra_meta or {}),
    }
    with open(os.path.join(out, META_FILE), "w") as f:
      json.dump(meta, f, indent=2)
    try:
      files.publish_dir(out, final, last=META_FILE)  # the commit point
    except OSError:
      if not files.exists(files.join(final, META_FILE)):
        raise
      # Lost a race with a concurrent build of the same inputs: theirs is complete.
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return final


def load_corpus_meta(dataset_dir: str) -> dict:
  path = files.join(dataset_dir, META_FILE)
  if not files.isfile(path):
    raise FileNotFoundError(f"{dataset_dir} is not a corpus built by build_corpus "
                            f"(no {META_FILE})")
  return files.read_json(path)


def load_token_counts(dataset_dir: str) -> np.ndarray:
  """Token-id counts of the train split -> int64[vocab]."""
  path = files.join(dataset_dir, COUNTS_FILE)
  if not files.isfile(path):
    raise FileNotFoundError(f"no {COUNTS_FILE} in {dataset_dir}; build it with build_corpus")
  with files.open(path, "rb") as f:
    return np.load(f)


def local_dataset(dataset_dir: str) -> str:
  """`dataset_dir`, or for a bucket its local copy (made once per host)."""
  load_corpus_meta(dataset_dir)
  return files.local_copy(dataset_dir, META_FILE)


def open_split(dataset_dir: str, split: str):
  """Random-access source of documents {'ids', 'sentence_lengths'} of one split."""
  dataset_dir = local_dataset(dataset_dir)
  builder = tfds.builder_from_directory(dataset_dir)
  if split not in builder.info.splits:
    raise ValueError(f"{dataset_dir} has no split {split!r}; it has {list(builder.info.splits)}")
  info = builder.info.splits[split]
  paths = [os.path.join(dataset_dir, f) for f in info.filenames]
  missing = [f for f in paths if not os.path.isfile(f)]
  if missing:
    raise FileNotFoundError(f"split {split!r} of {dataset_dir}: missing shard file(s) {missing}; "
                            "the dataset is incomplete: remove the directory to rebuild it")
  return NamedSource(builder.as_data_source(split), split, paths, list(info.shard_lengths))


class NamedSource:
  """A data source whose read errors name the shard file (ArrayRecord's do not)."""

  def __init__(self, source, split: str, files: list[str], shard_lengths: list[int]):
    self._source, self._split, self._files = source, split, files
    self._ends = np.cumsum(shard_lengths) if len(shard_lengths) == len(files) else None

  def __len__(self) -> int:
    return len(self._source)

  def _error(self, i: int, e: Exception) -> IOError:
    if self._ends is not None and self._files:
      f = self._files[min(int(np.searchsorted(self._ends, i, side="right")), len(self._files) - 1)]
    else:
      f = ", ".join(self._files)
    return IOError(f"cannot read document {i} of split {self._split!r} from {f}: "
                   f"{type(e).__name__}: {e}. The file is corrupt or truncated; remove the "
                   f"dataset directory {os.path.dirname(f)} to rebuild it.")

  def __getitem__(self, i):
    try:
      return self._source[i]
    except Exception as e:  # pylint: disable=broad-except
      raise self._error(int(i), e) from e

  def __getitems__(self, indices):
    try:
      return self._source.__getitems__(indices)
    except Exception:  # pylint: disable=broad-except
      return [self[i] for i in indices]  # finds (and names) the bad record
