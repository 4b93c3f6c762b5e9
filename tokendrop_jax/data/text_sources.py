"""Sources of a corpus: each a stream of documents (lists of sentences) per split.

  * `TextFiles`: paths or globs (local or gs://) of text, JSON lines or Parquet
    (text_readers.py reads each format).
  * `TfdsText`: any TFDS text dataset by name and text field (records split
    into sentences in the same way).
  * `Mixture`: the train documents of several sources interleaved by weight.
  * `Carved`: a validation split carved from a source's train documents.

Each has `documents(split)`, `describe()` (for corpus_meta.json) and
`fingerprint_items()` (what says its dataset must be rebuilt); text_builder.py
tokenizes any of them into a dataset.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Iterator, Sequence

import tensorflow_datasets as tfds

from tokendrop_jax import files
from tokendrop_jax.data.text_readers import file_format, read_documents, split_sentences

TRAIN, VALIDATION = "train", "validation"


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
