"""Which tokens of packed rows BERT predicts: single tokens, whole words, or n-grams of words.

  'token'       each non-special token on its own (BERT's first release)
  'whole_word'  a word's pieces are chosen together or not at all (BERT's later
                models, the official token-dropping data); n-gram masking with n = 1
  'ngram'       spans of 1..max_ngram consecutive whole words, the length drawn with
                probability proportional to 1/n, as Google's `create_pretraining_data`
                (ALBERT) does

A word starts at a piece the tokenizer marks as a start (WordPiece: not '##...';
SentencePiece: '\u2581...'), after a special token, and at a row start; special
tokens belong to no word and no span runs across one (a [SEP] between packed
documents ends a span). Per row, at most n = min(P, max(1, round(mask_prob * c)))
of its c non-special tokens are chosen, as for 'token'; like the reference, spans
are taken greedily in a random order, shortened to fit what is left of n, and
skipped if they overlap a chosen one, so a row whose remaining words are all
longer than what is left stops a little short of n. Each chosen token is then
replaced by 80/10/10 on its own. All of it is numpy given the generator; the
greedy pass runs over the rows at once, one candidate word per row per step.

All masking is here, with what it needs of the tokenizer (`SpecialIds`: the
special ids, their table, the word starts); `pipeline.py` packs the rows and calls
`mask_batch` once a batch, with that batch's own generator (`batch_rng`).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from tokendrop_jax.data import vocab

MASKINGS = ("token", "whole_word", "ngram")


def check_masking(masking: str, max_ngram: int, where: str = "data") -> None:
  """A clear error naming the field for an unknown mode or n-gram length (read by 'ngram'
  only: the other modes ignore it)."""
  if masking not in MASKINGS:
    raise ValueError(f"{where}.masking must be one of {MASKINGS}, got {masking!r}")
  if masking == "ngram" and (not isinstance(max_ngram, (int, np.integer))
                             or isinstance(max_ngram, bool) or max_ngram < 1):
    raise ValueError(f"{where}.max_ngram must be an integer >= 1, got {max_ngram!r}")


# ------------------------------------------------------------ special ids ---
@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """What the pipeline (packing and masking) needs to know of the tokenizer."""
  vocab_size: int
  pad_id: int
  unk_id: int
  cls_id: int
  sep_id: int
  mask_id: int
  # Packed bool[vocab_size]: which ids begin a word (`word_start_table`);
  # only whole-word / n-gram masking needs it.
  word_start: bytes | None = dataclasses.field(default=None, repr=False)

  @property
  def special_ids(self) -> tuple[int, ...]:
    return (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)

  def special_table(self) -> np.ndarray:
    """bool[vocab_size]: the special ids, never masked nor drawn as a replacement (and a
    document of only these is skipped by packing)."""
    table = np.zeros((self.vocab_size,), bool)
    table[list(self.special_ids)] = True
    return table

  def word_starts(self) -> np.ndarray:
    """bool[vocab_size] word-start table."""
    if self.word_start is None:
      raise ValueError("whole-word and n-gram masking need the tokenizer's word starts: pass "
                       "the tokenizer, or SpecialIds.of(tokenizer, word_starts=True)")
    return unpack_table(self.word_start, self.vocab_size)

  @classmethod
  def of(cls, tok: Any, word_starts: bool = False) -> "SpecialIds":
    """From a `Tokenizer`, another `SpecialIds`, or a corpus_meta dict.

    `word_starts`: also the word-start table (a tokenizer's pieces are read).
    """
    if isinstance(tok, SpecialIds):
      out = tok
    elif isinstance(tok, dict):
      out = cls(vocab_size=tok["vocab_size"], **tok["special_ids"])
    else:
      out = cls(tok.vocab_size, tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id)
    if word_starts and out.word_start is None:
      if isinstance(tok, (SpecialIds, dict)):
        raise ValueError("whole-word and n-gram masking need the tokenizer's word starts; "
                         "special ids alone do not have them: pass the tokenizer")
      out = dataclasses.replace(out, word_start=pack_table(word_start_table(tok)))
    return out


# ------------------------------------------------------------- word starts ---
def word_start_table(tok: Any) -> np.ndarray:
  """bool[vocab]: whether each id begins a word; special ids are True (their own unit)."""
  kind = getattr(tok, "kind", vocab.SENTENCEPIECE)
  table = np.array([vocab.is_word_start(tok.id_to_piece(i), kind)
                    for i in range(tok.vocab_size)], bool)
  table[list(tok.special_ids)] = True
  return table


def pack_table(table: np.ndarray) -> bytes:
  """bool[V] -> V/8 bytes: small to pickle to grain workers, hashable in a frozen dataclass."""
  return np.packbits(np.asarray(table, bool)).tobytes()


def unpack_table(bits: bytes, vocab_size: int) -> np.ndarray:
  return np.unpackbits(np.frombuffer(bits, np.uint8), count=vocab_size).astype(bool)


# ------------------------------------------------------------------ masking ---
def mask_batch(ids: np.ndarray, rng: np.random.Generator, special: SpecialIds, *,
               max_predictions: int, mask_prob: float = 0.15, masking: str = "token",
               max_ngram: int = 3) -> dict[str, np.ndarray]:
  """BERT dynamic masking of packed rows ids int32[B, S] (pure given `rng`).

  Per row, n = min(P, max(1, round(mask_prob * c))) positions among its c
  non-special tokens (0 if c == 0); each chosen token becomes [MASK] with
  p=0.8, a random non-special token with p=0.1, stays unchanged with p=0.1.
  `masking` 'whole_word' / 'ngram' choose whole words / n-grams of them
  (`mask_words`; `special` must then carry its word-start table).
  """
  if masking != "token":
    return mask_words(
        ids, rng, special, max_predictions=max_predictions, mask_prob=mask_prob,
        word_start=special.word_starts(), max_ngram=1 if masking == "whole_word" else max_ngram)
  b, s = ids.shape
  p = max_predictions
  is_special = special.special_table()
  cand = ~is_special[ids]  # [B, S]
  n_pred = budget(cand.sum(1), p, mask_prob)
  keys = rng.random((b, s), dtype=np.float32)
  keys[~cand] = 2.0  # never among the first n_pred: n_pred <= n_cand
  if p < s:
    top = np.argpartition(keys, p - 1, axis=1)[:, :p]  # [B, P] the p smallest, unordered
    top = np.take_along_axis(top, np.argsort(np.take_along_axis(keys, top, 1), 1), 1)
  else:
    top = np.argsort(keys, axis=1)[:, :p]
  valid = np.arange(p)[None, :] < n_pred[:, None]  # [B, P]
  pos = np.sort(np.where(valid, top, s), axis=1)  # ascending, padding slots last
  valid = pos < s
  pos = np.where(valid, pos, 0).astype(np.int32)
  return predictions(ids, pos, valid, rng, is_special, special.mask_id)


def batch_rng(seed: int, stream: int, worker: int, batch_index: int) -> np.random.Generator:
  """Masking randomness of one batch: a function of its place in the stream only."""
  return np.random.default_rng([seed, stream, worker, batch_index])


# ------------------------------------------------------------ replacement ---
def predictions(ids: np.ndarray, pos: np.ndarray, valid: np.ndarray, rng: np.random.Generator,
                is_special: np.ndarray, mask_id: int) -> dict[str, np.ndarray]:
  """BERT's 80/10/10 at chosen positions int32[B, P] (ascending; `valid` bool[B, P]).

  Each chosen token becomes [MASK] with p=0.8, a random non-special token with
  p=0.1, stays unchanged with p=0.1 (one draw per slot, padding slots included).
  """
  b, p = pos.shape
  rows = np.arange(b)[:, None]
  labels = np.where(valid, ids[rows, pos], 0).astype(np.int32)
  u = rng.random((b, p), dtype=np.float32)
  nonspecial = np.flatnonzero(~is_special)
  random_ids = nonspecial[rng.integers(0, len(nonspecial), (b, p))]
  new = np.where(u < 0.8, mask_id, np.where(u < 0.9, random_ids, labels))
  input_ids = ids.copy()
  input_ids[np.broadcast_to(rows, (b, p))[valid], pos[valid]] = new[valid]
  return {
      "input_ids": input_ids,
      "masked_lm_positions": pos,
      "masked_lm_ids": labels,
      "masked_lm_weights": valid.astype(np.float32),
  }


def budget(n_cand: np.ndarray, max_predictions: int, mask_prob: float) -> np.ndarray:
  """Tokens to predict per row: min(P, max(1, round(mask_prob * c)), c)."""
  return np.minimum(np.minimum(max_predictions, np.maximum(1, np.rint(mask_prob * n_cand))),
                    n_cand)


# ------------------------------------------------------------------ words ---
def words(ids: np.ndarray, is_special: np.ndarray, word_start: np.ndarray):
  """The words of rows ids int32[B, S] -> (first, end, run, count, word_of).

  first, end   int[B, W]  token span [first, end) of word w (W = most words in a row;
                          slots past a row's count: first = end = S)
  run          int[B, W]  words from w to the end of its segment (the next special), w included
  count        int[B]     words in each row
  word_of      int[B, S]  the word of each token (-1 for special tokens)
  """
  b, s = ids.shape
  special = is_special[ids]  # [B, S]
  cand = ~special
  starts = word_start[ids]
  starts[:, 1:] |= special[:, :-1]
  starts[:, 0] = True
  starts &= cand
  ends = np.empty((b, s), bool)  # the last token of each word
  np.logical_or(starts[:, 1:], special[:, 1:], out=ends[:, :-1])
  ends[:, -1] = True
  ends &= cand
  count = starts.sum(1)
  w = max(1, int(count.max()))
  word_of = np.cumsum(starts, 1, dtype=np.int32) - 1
  word_of[special] = -1
  slots = np.arange(w, dtype=np.int32)[None, :]
  present = slots < count[:, None]  # [B, W]; row-major order = flatnonzero's
  first = np.full((b, w), s, np.int32)
  flat = np.flatnonzero(starts).astype(np.int32)
  first[present] = flat % s
  end = np.full((b, w), s, np.int32)
  flat = np.flatnonzero(ends).astype(np.int32)
  end[present] = flat % s + 1
  # A segment's last word is followed by a special token (or nothing) -> runs by a
  # backwards running minimum of the segment-last indices.
  nxt = np.full((b, w), s, np.int32)
  nxt[:, :-1] = first[:, 1:]
  seg_last = (nxt != end) | (slots >= count[:, None] - 1)
  idx = np.where(seg_last, slots, np.int32(w))
  last = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1]
  run = np.where(present, last - slots + 1, 0)
  return first, end, run, count, word_of


def ngram_cdf(max_ngram: int) -> np.ndarray:
  """float64[max_ngram]: cumulative P(n) with P(n) proportional to 1/n."""
  p = 1.0 / np.arange(1, max_ngram + 1)
  return np.cumsum(p / p.sum())


def ngram_lengths(u: np.ndarray, avail: np.ndarray, max_ngram: int) -> np.ndarray:
  """n-gram lengths in [1, avail] with P(n) ~ 1/n, from uniforms u in [0, 1) (same shape).

  The reference renormalises 1/n over the n-grams that exist from a word, i.e.
  those that end before its segment does (`avail` = min(max_ngram, words left)).
  """
  cdf = ngram_cdf(max_ngram)
  n = 1 + (u[..., None] * cdf[avail - 1][..., None] >= cdf).sum(-1)
  return np.minimum(n, avail)  # guards float rounding at the top


def choose_spans(ids: np.ndarray, rng: np.random.Generator, is_special: np.ndarray,
                 word_start: np.ndarray, n_pred: np.ndarray, max_ngram: int,
                 chunk: int = 16, steps: bool = False) -> np.ndarray:
  """bool[B, S]: the tokens chosen by whole-word n-gram masking (at most n_pred[r] per row).

  Candidates are the words in a random order per row, each with an n-gram length
  drawn from 1/n (renormalised to the words left in its segment); step k takes
  every row's k-th candidate at once. A row's budget is usually spent within its
  first few dozen candidates, so what a step needs is gathered `chunk` candidates
  at a time. `steps`: int32[B, S] instead, 1 + the step that took each chosen
  token, 0 for the others (the tokens of one n-gram share it; for tests).
  """
  b, s = ids.shape
  first, end, run, count, word_of = words(ids, is_special, word_start)
  w, nn = first.shape[1], max_ngram
  keys = rng.random((b, w), dtype=np.float32)
  keys[np.arange(w)[None, :] >= count[:, None]] = 2.0  # absent words last
  order = np.argsort(keys, axis=1)  # [B, W]
  u = rng.random((b, w))  # draws the n-gram length of the k-th candidate
  span = np.arange(nn)
  end_pad = np.concatenate([end, np.full((b, nn), s, end.dtype)], 1)  # [B, W + N]
  base = (np.arange(b) * (w + nn))[:, None, None]
  covered = np.zeros(b * (w + nn), bool)  # flat [B, W + N]: a + j needs no clip
  step = np.zeros(b * (w + nn), np.int32) if steps else None  # 1 + the step that took it
  left = n_pred.astype(np.int32)
  for k in range(w):
    if k % chunk == 0:
      if not ((left > 0) & (count > k)).any():
        break
      o = order[:, k:k + chunk]  # [B, K]
      avail = np.clip(np.take_along_axis(run, o, 1), 1, nn)  # longest n-gram from there
      drawn = ngram_lengths(u[:, k:k + chunk], avail, nn)  # [B, K]
      a = o[:, :, None] + span  # [B, K, N] the words of each candidate's 1..N-grams
      kk = a.shape[1]
      size = np.take_along_axis(end_pad, a.reshape(b, -1), 1).reshape(b, kk, nn)
      size -= np.take_along_axis(first, o, 1)[:, :, None]  # tokens of each n-gram
      size[(span >= drawn[:, :, None]) | (k + np.arange(kk) >= count[:, None])[:, :, None]] = s + 1
      size = size.transpose(1, 0, 2).copy()  # [K, B, N]: never fits past the drawn length
      cell = (a + base).transpose(1, 0, 2).copy()  # [K, B, N] flat index into covered
    sz, c = size[k % chunk], cell[k % chunk]  # [B, N], sizes increasing in j
    fits = sz <= left[:, None]  # the longest n-gram that fits: a prefix of j
    take = fits[:, 0] & ~(covered[c] & fits).any(1)
    fits &= take[:, None]
    covered[c[fits]] = True
    if steps:
      step[c[fits]] = k + 1
    left -= np.where(fits, sz, 0).max(1)
  out = np.take_along_axis((step if steps else covered).reshape(b, w + nn),
                           np.maximum(word_of, 0), 1)  # [B, S]
  out[word_of < 0] = 0
  return out


def mask_words(ids: np.ndarray, rng: np.random.Generator, special: SpecialIds, *,
               max_predictions: int, mask_prob: float, word_start: np.ndarray,
               max_ngram: int) -> dict[str, np.ndarray]:
  """Whole-word n-gram masking of packed rows ids int32[B, S] (pure given `rng`).

  `word_start` bool[vocab]; max_ngram=1 is whole-word masking. Output as `mask_batch`.
  """
  b, s = ids.shape
  p = max_predictions
  is_special = special.special_table()
  n_pred = budget((~is_special[ids]).sum(1), p, mask_prob)
  chosen = choose_spans(ids, rng, is_special, word_start, n_pred, max_ngram)  # [B, S]
  pos = np.sort(np.where(chosen, np.arange(s)[None, :], s), axis=1)[:, :p]  # at most n_pred <= P
  valid = pos < s
  pos = np.where(valid, pos, 0).astype(np.int32)
  return predictions(ids, pos, valid, rng, is_special, special.mask_id)
