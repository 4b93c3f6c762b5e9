"""Tokenizing documents, in a pool of processes when asked: the slow part of a build.

With `workers > 1` chunks of documents are tokenized in a pool of processes
while the caller reads the source and writes the records in source order, so
the dataset is the same, byte for byte, whatever the number of workers.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import multiprocessing
from typing import Iterable, Iterator, Sequence

import numpy as np

from tokendrop_jax.data import tokenizer as tokenizer_lib
from tokendrop_jax.importance import count_token_ids

_ENCODE_CHUNK = 8192  # sentences per sentencepiece batch call


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


def encode_documents(tok: tokenizer_lib.Tokenizer, docs: Iterable[list[str]],
                     workers: int = 1) -> Iterator[EncodedChunk]:
  """`docs` in chunks of about `_ENCODE_CHUNK` sentences, each `encode_chunk`ed, in order."""
  return encode_chunks(tok, _chunks(docs, _ENCODE_CHUNK), workers)
