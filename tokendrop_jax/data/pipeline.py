"""grain input pipeline: shard, shuffle, pack full sentences, mask, batch.

  documents --[virtual shard v of V]--> [shuffle per epoch, repeat] --> pack + mask
            --> batch dict of numpy arrays (shard v's rows of the global batch)

A virtual shard is a fixed slice of the documents with its own iterator state;
the global batch at step s is shards 0..V-1's batch s, in shard order, whatever
the number of processes reading them (`training/host_rows.py`).

Packing is RoBERTa's FULL-SENTENCES: each row is `[CLS] s1 s2 ... [SEP]` filled
with whole sentences; a row may run across documents with a [SEP] between
them; a sentence is split only if it is longer than seq_len - 2 (it then fills
the rest of the current row and continues in the next). Masking is dynamic
(BERT 80/10/10; by token, whole word or n-gram of words) and all of it is in
`masking.py`; each batch draws from a generator seeded with (seed, stream,
worker, batch index), so a restored iterator reproduces the exact batches.

Batch (B = global_batch_size // num_shards, S = seq_len, P = max predictions):
  input_ids, input_mask, token_type_ids   int32 [B, S]
  masked_lm_positions, masked_lm_ids      int32 [B, P]  (padding slots: 0)
  masked_lm_weights                       float32 [B, P] (1 real prediction, 0 padding)

The iterator is a `grain.DatasetIterator`: its state (parent position + the
sentence/token offset in the current document + batch index) is small JSON,
saved with orbax through `grain.checkpoint.CheckpointSave(it)`.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

import grain
import numpy as np

from tokendrop_jax.data import masking as masking_lib

Batch = dict[str, np.ndarray]
MIN_SEQ_LEN = 8


class DocumentSource(Protocol):
  """Random access to documents {'ids': int32[n], 'sentence_lengths': int32[k]}."""

  def __len__(self) -> int: ...
  def __getitem__(self, i: int) -> dict[str, np.ndarray]: ...


# ------------------------------------------------------------------ packing ---
class _PackMaskIterator(grain.DatasetIterator):
  """Packs documents into rows (FULL-SENTENCES), B rows per batch, then masks."""

  def __init__(self, parent: grain.DatasetIterator, cfg: "PackMaskDataset"):
    super().__init__(parent)
    self._cfg = cfg
    self._batch_index = 0
    self._exhausted = False  # upstream ended: only padding batches (if any) remain
    self._skip = (0, 0)      # (sentence, token) to skip in the next document (restore)
    self._doc = None         # (ids, starts list, lengths list) of the current document
    self._doc_state = None   # parent state before the current document was read
    self._si = self._ti = 0  # cursor: sentence index, token offset inside it
    self.skipped_documents = 0  # empty or only special tokens (since this iterator started)

  # The cursor is always at the start of the next row between batches, so the
  # state needs no partially built row: re-reading from `_doc_state` rebuilds it.
  def get_state(self) -> dict[str, Any]:
    if self._doc is None:
      return {"parent": self._parent.get_state(), "sentence": 0, "token": 0,
              "batch_index": self._batch_index, "exhausted": self._exhausted}
    return {"parent": self._doc_state, "sentence": self._si, "token": self._ti,
            "batch_index": self._batch_index, "exhausted": self._exhausted}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._doc = self._doc_state = None
    self._skip = (int(state["sentence"]), int(state["token"]))
    self._batch_index = int(state["batch_index"])
    self._exhausted = bool(state["exhausted"])

  def _next_doc(self) -> bool:
    """Loads the next non-empty document; False at the end of the stream."""
    while True:
      state = self._parent.get_state()
      try:
        doc = next(self._parent)
      except StopIteration:
        self._doc = None
        return False
      ids = np.asarray(doc["ids"], np.int32)
      lengths = np.asarray(doc["sentence_lengths"], np.int64)
      if int(lengths.sum()) != len(ids) or (lengths <= 0).any():
        raise ValueError("document field 'sentence_lengths' must be positive and sum to "
                         f"len('ids') = {len(ids)}, got {lengths.tolist()}")
      if not len(ids) or self._cfg.is_special[ids].all():
        # Nothing to predict in it; skipping keeps every row a full one.
        self.skipped_documents += 1
        n = self.skipped_documents
        if n & (n - 1) == 0:  # 1, 2, 4, 8, ...: visible without flooding the log
          logging.warning("Skipped a document with %s (%d skipped so far).",
                          "no tokens" if not len(ids) else "only special tokens", n)
        continue
      starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
      self._doc = (ids, starts.tolist(), lengths.tolist())
      self._doc_state = state
      self._si, self._ti = self._skip
      self._skip = (0, 0)
      return True

  def _fill_row(self, row: np.ndarray) -> int:
    """Writes one packed row [CLS] ... [SEP] into `row` -> its length (0: no data)."""
    cfg = self._cfg
    cap = len(row) - 2
    segments = []  # (array, start, n); n == 0 means a [SEP] between documents
    used = 0
    while True:
      if self._doc is None and not self._next_doc():
        break
      ids, starts, lengths = self._doc
      sent_len = lengths[self._si]
      rest = sent_len - self._ti
      sep = 1 if (used and self._si == 0 and self._ti == 0) else 0
      if used + sep + rest <= cap:
        take = rest
      elif sent_len > cap and cap - used - sep > 0:
        take = cap - used - sep  # an over-long sentence: fill the row, go on in the next
      else:
        break  # the sentence fits a fresh row: close this one
      if sep:
        segments.append((None, 0, 0))
      a = starts[self._si] + self._ti
      if segments and segments[-1][0] is ids and segments[-1][1] + segments[-1][2] == a:
        segments[-1] = (ids, segments[-1][1], segments[-1][2] + take)  # contiguous: merge
      else:
        segments.append((ids, a, take))
      used += sep + take
      self._ti += take
      if self._ti == sent_len:
        self._si, self._ti = self._si + 1, 0
        if self._si == len(lengths):
          self._doc = None
      if used == cap:
        break
    if not used:
      return 0
    row[0] = cfg.special.cls_id
    pos = 1
    for arr, a, n in segments:
      if arr is None:
        row[pos] = cfg.special.sep_id
        pos += 1
      else:
        row[pos:pos + n] = arr[a:a + n]
        pos += n
    row[pos] = cfg.special.sep_id
    return pos + 1

  def __next__(self) -> Batch:
    cfg = self._cfg
    if cfg.num_batches is not None and self._batch_index >= cfg.num_batches:
      raise StopIteration
    b, s = cfg.batch_size, cfg.seq_len
    ids = np.full((b, s), cfg.special.pad_id, np.int32)
    lengths = np.zeros((b,), np.int32)
    n = 0
    while n < b and not self._exhausted:
      length = self._fill_row(ids[n])
      if not length:
        self._exhausted = True
        break
      lengths[n] = length
      n += 1
    if n < b:
      if cfg.drop_remainder or (n == 0 and cfg.num_batches is None):
        raise StopIteration
    rng = masking_lib.batch_rng(cfg.seed, cfg.stream, cfg.worker, self._batch_index)
    batch = masking_lib.mask_batch(ids, rng, cfg.special, max_predictions=cfg.max_predictions,
                                   mask_prob=cfg.mask_prob, masking=cfg.masking,
                                   max_ngram=cfg.max_ngram)
    batch["input_mask"] = (np.arange(s)[None, :] < lengths[:, None]).astype(np.int32)
    batch["token_type_ids"] = np.zeros((b, s), np.int32)
    self._batch_index += 1
    return {k: batch[k] for k in _KEYS}


_KEYS = ("input_ids", "input_mask", "token_type_ids", "masked_lm_positions", "masked_lm_ids",
         "masked_lm_weights")


class PackMaskDataset(grain.IterDataset):
  """IterDataset of documents -> IterDataset of packed, masked batches."""

  def __init__(self, parent: grain.IterDataset, *, special: masking_lib.SpecialIds,
               seq_len: int, batch_size: int, max_predictions: int, mask_prob: float, seed: int,
               stream: int, drop_remainder: bool, num_batches: int | None = None,
               masking: str = "token", max_ngram: int = 3):
    super().__init__(parent)
    self.masking, self.max_ngram = masking, max_ngram
    self.special, self.seq_len, self.batch_size = special, seq_len, batch_size
    self.max_predictions, self.mask_prob, self.seed = max_predictions, mask_prob, seed
    self.stream, self.drop_remainder, self.num_batches = stream, drop_remainder, num_batches
    self.worker = 0
    self.is_special = special.special_table()  # bool[vocab_size]

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    """Called by grain in each worker process: that worker packs a slice of the documents.

    The worker index joins the masking seed, so workers draw different masks.
    """
    self.worker = 1 + (sl.start or 0)
    self._parent.set_slice(sl, sequential_slice)  # the document PrefetchIterDataset

  def __iter__(self) -> _PackMaskIterator:
    return _PackMaskIterator(self._parent.__iter__(), self)


# ---------------------------------------------------------------- builders ---
def _dataset_tokenizer(path: str):
  """The tokenizer a dataset directory was built with (its copy inside it)."""
  from tokendrop_jax import files  # pylint: disable=g-import-not-at-top
  from tokendrop_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  names = tuple(tokenizer_lib.SAVED_NAMES.values())
  for name in names:
    if files.exists(files.join(path, name)):
      return tokenizer_lib.load_tokenizer(files.join(path, name))
  raise FileNotFoundError(f"{path} has no tokenizer ({' or '.join(names)}): whole-word and "
                          "n-gram masking need its word starts; pass the tokenizer")


def _resolve(dataset_dir_or_source, split: str, tokenizer, masking: str = "token"):
  words = masking != "token"
  if isinstance(dataset_dir_or_source, (str, bytes)) or hasattr(dataset_dir_or_source,
                                                                "__fspath__"):
    from tokendrop_jax.data import text_builder  # pylint: disable=g-import-not-at-top
    path = str(dataset_dir_or_source)
    source = text_builder.open_split(path, split)
    if tokenizer is None:
      tokenizer = _dataset_tokenizer(path) if words else text_builder.load_corpus_meta(path)
  else:
    source = dataset_dir_or_source
    if tokenizer is None:
      raise ValueError("tokenizer (special ids) is required when passing a data source")
  return source, masking_lib.SpecialIds.of(tokenizer, word_starts=words)


def _check_args(seq_len, max_predictions_per_seq, global_batch_size, mask_prob,
                shard_index, num_shards, num_epochs=1, masking="token", max_ngram=3):
  masking_lib.check_masking(masking, max_ngram, where="data")
  if seq_len < MIN_SEQ_LEN:
    raise ValueError(f"seq_len must be >= {MIN_SEQ_LEN}, got {seq_len}")
  if not 1 <= max_predictions_per_seq <= seq_len - 2:
    raise ValueError(f"max_predictions_per_seq must be in [1, seq_len - 2 = {seq_len - 2}], "
                     f"got {max_predictions_per_seq}")
  if not 0.0 < mask_prob < 1.0:
    raise ValueError(f"mask_prob must be in (0, 1), got {mask_prob}")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be None (repeat forever) or >= 1, got {num_epochs}")
  if num_shards < 1 or not 0 <= shard_index < num_shards:
    raise ValueError(f"shard_index {shard_index} not in [0, num_shards={num_shards})")
  if global_batch_size <= 0 or global_batch_size % num_shards:
    raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of "
                     f"num_shards {num_shards}")


def _documents(source, *, shard_index, num_shards, shuffle, seed, num_epochs,
               read_threads) -> grain.IterDataset:
  ds = grain.MapDataset.source(source)
  if len(ds) < num_shards:
    raise ValueError(f"{len(ds)} documents cannot be shared by {num_shards} shards "
                     "(data.num_shards)")
  ds = ds[shard_index::num_shards]  # disjoint shards covering the split
  if shuffle:
    ds = ds.shuffle(seed=seed)  # repeat() reshuffles every epoch (seed + epoch)
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                              prefetch_buffer_size=4 * max(1, read_threads)))


def make_pretrain_iterator(dataset_dir_or_source, *, split: str = "train", seq_len: int,
                           max_predictions_per_seq: int, global_batch_size: int,
                           tokenizer=None, mask_prob: float = 0.15, seed: int = 0,
                           shuffle: bool = True, num_epochs: int | None = None,
                           shard_index: int = 0, num_shards: int = 1, worker_count: int = 0,
                           read_threads: int = 4, prefetch_batches: int = 0,
                           masking: str = "token",
                           max_ngram: int = 3) -> grain.DatasetIterator:
  """Checkpointable iterator of packed, masked batches of one virtual shard.

  `dataset_dir_or_source`: a directory from `build_corpus` (special ids then
  come from its metadata unless `tokenizer` is given) or a `DocumentSource`
  (then `tokenizer`, a Tokenizer or SpecialIds, is required). `num_epochs=None`
  repeats forever; a finite stream drops its last incomplete batch. The
  iterator is virtual shard `shard_index` of `num_shards`: every
  `num_shards`-th document, global_batch_size // num_shards rows per batch,
  masks drawn from its own stream. `worker_count` > 0 runs the
  pipeline in grain worker processes (a different but equally exact order).
  `masking`: 'token', 'whole_word' or 'ngram' (up to `max_ngram` words), see
  `masking.py`; the last two read the word starts of the tokenizer (given, or the
  dataset directory's).
  """
  _check_args(seq_len, max_predictions_per_seq, global_batch_size, mask_prob, shard_index,
              num_shards, num_epochs, masking, max_ngram)
  source, special = _resolve(dataset_dir_or_source, split, tokenizer, masking)
  docs = _documents(source, shard_index=shard_index, num_shards=num_shards,
                    shuffle=shuffle, seed=seed, num_epochs=num_epochs, read_threads=read_threads)
  ds = PackMaskDataset(docs, special=special, seq_len=seq_len,
                       batch_size=global_batch_size // num_shards,
                       max_predictions=max_predictions_per_seq, mask_prob=mask_prob, seed=seed,
                       stream=shard_index, drop_remainder=True, masking=masking,
                       max_ngram=max_ngram)
  if worker_count > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  elif prefetch_batches > 0:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch_batches)
  return iter(ds)


def make_eval_iterator(dataset_dir_or_source, *, split: str = "validation", seq_len: int,
                       max_predictions_per_seq: int, global_batch_size: int, tokenizer=None,
                       mask_prob: float = 0.15, seed: int = 0, shard_index: int = 0,
                       num_shards: int = 1, num_batches: int | None = None,
                       read_threads: int = 4, masking: str = "token",
                       max_ngram: int = 3) -> grain.DatasetIterator:
  """One deterministic pass over `split` (no shuffle, fixed masking by `seed`).

  Nothing is dropped: the last batch is padded with all-padding rows
  (input_mask 0, masked_lm_weights 0). With `num_batches`, exactly that many
  batches come out (all-padding batches after the data ends, the rest of the
  data unread): pass the same number to every shard to keep them in step.
  """
  _check_args(seq_len, max_predictions_per_seq, global_batch_size, mask_prob, shard_index,
              num_shards, masking=masking, max_ngram=max_ngram)
  source, special = _resolve(dataset_dir_or_source, split, tokenizer, masking)
  docs = _documents(source, shard_index=shard_index, num_shards=num_shards,
                    shuffle=False, seed=seed, num_epochs=1, read_threads=read_threads)
  ds = PackMaskDataset(docs, special=special, seq_len=seq_len,
                       batch_size=global_batch_size // num_shards,
                       max_predictions=max_predictions_per_seq, mask_prob=mask_prob, seed=seed,
                       stream=shard_index, drop_remainder=False, num_batches=num_batches,
                       masking=masking, max_ngram=max_ngram)
  return iter(ds)
