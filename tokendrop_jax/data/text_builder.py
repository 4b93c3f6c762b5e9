"""Tokenized text corpus as a TFDS dataset in ArrayRecord files (no TensorFlow).

Built from any source of text_sources.py (files, TFDS, mixtures, carved
validation); tokenized by encode_pool.py. Each stored example is one document:

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
This module writes that layout and reads it back (`load_corpus_meta`,
`load_token_counts`, `open_split`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from typing import Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from tokendrop_jax import files
from tokendrop_jax.data import encode_pool
from tokendrop_jax.data import tokenizer as tokenizer_lib
from tokendrop_jax.data.text_sources import TRAIN, VALIDATION, TextFiles, TfdsText

META_FILE = "corpus_meta.json"
COUNTS_FILE = "token_counts.npy"
TOKENIZER_FILE = "tokenizer.model"  # a WordPiece dataset has tokenizer.json (tok.file_name)
_FORMAT_VERSION = 1

# progress(split, documents_written, tokens_written), called after each chunk.
Progress = Callable[[str, int, int], None]


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
    docs = self._source.documents(split)
    for chunk in encode_pool.encode_documents(self._tokenizer, docs, self._workers):
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
  source = TextFiles(train=tuple(files.expand(train_files, "train_files")),
                     validation=tuple(files.expand(valid_files, "valid_files")))
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
