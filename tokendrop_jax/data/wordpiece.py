"""BERT's WordPiece tokenizer, through Hugging Face `tokenizers`, and a trainer for it.

Apart from SentencePiece (tokenizer.py) because it is another library and file
form (BERT's `vocab.txt` or an HF `tokenizer.json`) behind the same interface;
`tokenizer.load_tokenizer` opens either. The trainer is written here rather than
HF's so that a vocabulary depends only on its text (HF breaks ties by hash order).
"""
from __future__ import annotations

import heapq
import json
import logging
import os
from typing import Iterator, Sequence

from tokendrop_jax import files
from tokendrop_jax.data.vocab import (CONTINUATION, SAVED_NAMES, SPECIAL_PIECES, UNK,
                                      WORDPIECE, check_nonempty, find_special_ids,
                                      is_word_start)


def _bert_normalizer(lowercase: bool, strip_accents: bool | None, clean_text: bool = True,
                     handle_chinese_chars: bool = True):
  from tokenizers import normalizers  # pylint: disable=g-import-not-at-top
  # strip_accents=None follows `lowercase`, as in BERT's BasicTokenizer.
  return normalizers.BertNormalizer(clean_text=clean_text, handle_chinese_chars=handle_chinese_chars,
                                    strip_accents=strip_accents, lowercase=lowercase)


def _build_wordpiece(vocab: Sequence[str], normalizer: dict, max_chars: int = 100):
  """A `tokenizers.Tokenizer` as BERT's BasicTokenizer + WordpieceTokenizer."""
  from tokenizers import Tokenizer as HfTokenizer  # pylint: disable=g-import-not-at-top
  from tokenizers import decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  tok = HfTokenizer(models.WordPiece({p: i for i, p in enumerate(vocab)}, unk_token=UNK,
                                     max_input_chars_per_word=max_chars))
  tok.normalizer = _bert_normalizer(**normalizer)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece(prefix=CONTINUATION, cleanup=True)
  return tok


def infer_lowercase(vocab: Sequence[str]) -> bool:
  """Uncased iff no piece but the bracketed specials ([CLS], [unused0]) has an
  upper-case letter."""
  for piece in vocab:
    if len(piece) > 2 and piece[0] == "[" and piece[-1] == "]":
      continue
    if any(c.isupper() for c in piece):
      return False
  return True


class WordPieceTokenizer:
  """BERT's WordPiece tokenizer: a vocabulary (id order) and BERT's normaliser
  settings; saved as a self-describing HF `tokenizer.json`."""

  kind = WORDPIECE
  file_name = SAVED_NAMES[WORDPIECE]

  def __init__(self, vocab: Sequence[str], lowercase: bool, *, strip_accents: bool | None = None,
               clean_text: bool = True, handle_chinese_chars: bool = True,
               max_input_chars_per_word: int = 100, model_path: str = ""):
    self.model_path = os.fspath(model_path)
    where = self.model_path or "WordPiece vocabulary"
    self._vocab = [str(p) for p in vocab]
    ids = {}
    for i, piece in enumerate(self._vocab):
      if not piece or piece != piece.strip():
        raise ValueError(f"{where}: piece {i} ({piece!r}) is empty or has surrounding spaces")
      if piece in ids:
        raise ValueError(f"{where}: the piece {piece!r} appears twice (ids {ids[piece]} and {i})")
      ids[piece] = i
    self.special_ids = find_special_ids(ids.get, where)
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = self.special_ids
    self.vocab_size = len(self._vocab)
    self.lowercase = bool(lowercase)
    self._normalizer = dict(lowercase=self.lowercase, strip_accents=strip_accents,
                            clean_text=bool(clean_text),
                            handle_chinese_chars=bool(handle_chinese_chars))
    self._max_chars = int(max_input_chars_per_word)
    self._tok = _build_wordpiece(self._vocab, self._normalizer, self._max_chars)

  @classmethod
  def from_vocab(cls, vocab_txt: str, lowercase: bool | None = None) -> "WordPieceTokenizer":
    """BERT's `vocab.txt` (one piece a line, line n = id n); `lowercase` None: uncased
    iff the vocabulary has no upper-case letter (`infer_lowercase`)."""
    vocab_txt = os.fspath(vocab_txt)
    if not files.isfile(vocab_txt):
      raise FileNotFoundError(f"WordPiece vocabulary not found: {vocab_txt!r}")
    try:
      text = files.read_bytes(vocab_txt).decode("utf-8")
    except UnicodeDecodeError as e:
      raise ValueError(f"{vocab_txt}: not valid UTF-8: {e}") from None
    vocab = text.split("\n")
    if vocab and vocab[-1] == "":
      vocab.pop()  # the final newline
    vocab = [p.rstrip("\r") for p in vocab]
    if lowercase is None:
      lowercase = infer_lowercase(vocab)
    return cls(vocab, lowercase, model_path=vocab_txt)

  @classmethod
  def from_json(cls, path: str, lowercase: bool | None = None) -> "WordPieceTokenizer":
    """An HF `tokenizer.json` of a BERT WordPiece tokenizer (ours or a published one)."""
    path = os.fspath(path)
    if not files.isfile(path):
      raise FileNotFoundError(f"tokenizer not found: {path!r}")
    try:
      spec = json.loads(files.read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
      raise ValueError(f"{path}: not a tokenizer.json (invalid JSON: {e})") from None
    return cls.from_spec(spec, lowercase, path)

  @classmethod
  def from_spec(cls, spec: dict, lowercase: bool | None = None,
                path: str = "tokenizer.json") -> "WordPieceTokenizer":
    model = spec.get("model") if isinstance(spec, dict) else None
    if not isinstance(model, dict) or model.get("type") != "WordPiece":
      kind = model.get("type") if isinstance(model, dict) else None
      raise ValueError(f"{path}: not a WordPiece tokenizer (model type {kind!r}); expected "
                       "BERT's WordPiece (or use a SentencePiece .model)")
    if model.get("continuing_subword_prefix", CONTINUATION) != CONTINUATION:
      raise ValueError(f"{path}: continuing_subword_prefix must be {CONTINUATION!r}, got "
                       f"{model.get('continuing_subword_prefix')!r}")
    if model.get("unk_token", UNK) != UNK:
      raise ValueError(f"{path}: unk_token must be {UNK}, got {model.get('unk_token')!r}")
    norm = spec.get("normalizer") or {}
    if norm.get("type") != "BertNormalizer":
      raise ValueError(f"{path}: normalizer must be BERT's (BertNormalizer), got "
                       f"{norm.get('type')!r}")
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") != "BertPreTokenizer":
      raise ValueError(f"{path}: pre_tokenizer must be BERT's (BertPreTokenizer), got "
                       f"{pre.get('type')!r}")
    by_id = {}
    for piece, i in model.get("vocab", {}).items():
      by_id.setdefault(int(i), piece)
    vocab = [by_id.get(i) for i in range(len(by_id))]
    if None in vocab or len(by_id) != len(model.get("vocab", {})):
      raise ValueError(f"{path}: the WordPiece vocabulary's ids are not 0..{len(by_id) - 1} "
                       "without gaps or repeats")
    for added in spec.get("added_tokens") or []:
      if int(added["id"]) >= len(vocab) or vocab[int(added["id"])] != added["content"]:
        raise ValueError(f"{path}: added token {added['content']!r} (id {added['id']}) is not in "
                         "the WordPiece vocabulary")
    saved = bool(norm.get("lowercase", True))
    if lowercase is not None and bool(lowercase) != saved:
      raise ValueError(f"{path} is {'un' if saved else ''}cased (lowercase={saved}); "
                       f"lowercase={lowercase} conflicts with it")
    return cls(vocab, saved, strip_accents=norm.get("strip_accents"),
               clean_text=norm.get("clean_text", True),
               handle_chinese_chars=norm.get("handle_chinese_chars", True),
               max_input_chars_per_word=model.get("max_input_chars_per_word", 100),
               model_path=path)

  def to_json(self) -> str:
    """The HF `tokenizer.json` text (no added tokens, no post-processor: like `encode`)."""
    return self._tok.to_str(pretty=True)

  def serialized(self) -> bytes:
    """The bytes of this tokenizer's file (`file_name`)."""
    return self.to_json().encode("utf-8")

  def save(self, path: str) -> str:
    """Writes the `tokenizer.json` to `path` atomically -> path."""
    files.atomic_write(os.fspath(path), self.serialized())
    return os.fspath(path)

  def vocab_txt(self) -> str:
    """BERT's vocab.txt content: one piece a line, in id order."""
    return "".join(p + "\n" for p in self._vocab)

  @property
  def normalizer_settings(self) -> dict:
    return dict(self._normalizer)

  def __getstate__(self):
    return {"model_path": self.model_path, "vocab": self._vocab, "normalizer": self._normalizer,
            "max_chars": self._max_chars}

  def __setstate__(self, state):
    self.__init__(state["vocab"], model_path=state["model_path"],
                  max_input_chars_per_word=state["max_chars"], **state["normalizer"])

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, no special tokens added."""
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
    del num_threads  # `tokenizers` sizes its own pool (TOKENIZERS_PARALLELISM)
    return [e.ids for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

  def id_to_piece(self, i: int) -> str:
    return self._vocab[int(i)]

  def piece_to_id(self, piece: str) -> int:
    i = self._tok.token_to_id(piece)
    return self.unk_id if i is None else i

  def is_word_start(self, piece: str) -> bool:
    return is_word_start(piece, self.kind)

  def __repr__(self):
    return (f"WordPieceTokenizer({self.model_path!r}, vocab_size={self.vocab_size}, "
            f"lowercase={self.lowercase})")


def _word_counts(lines: Iterator[str], lowercase: bool) -> dict[str, int]:
  """Words as BERT's normaliser and pre-tokenizer cut them -> counts."""
  hf = _build_wordpiece(list(SPECIAL_PIECES), dict(lowercase=lowercase, strip_accents=None))
  norm, pre = hf.normalizer, hf.pre_tokenizer
  counts: dict[str, int] = {}
  for line in lines:
    for word, _ in pre.pre_tokenize_str(norm.normalize_str(line)):
      counts[word] = counts.get(word, 0) + 1
  return counts


def _merge_pieces(counts: dict[str, int], budget: int) -> list[str]:
  """WordPiece vocabulary by greedy pair merging (the BPE procedure HF's
  WordPieceTrainer runs), deterministic: ties go to the smaller pair.

  A word is its characters, every one but the first marked `##`; the most
  frequent adjacent pair merges into one piece, until `budget` pieces or no pair.
  """
  chars: dict[str, int] = {}
  for word, n in counts.items():
    for k, c in enumerate(word):
      piece = c if k == 0 else CONTINUATION + c
      chars[piece] = chars.get(piece, 0) + n
  alphabet = sorted(chars, key=lambda c: (-chars[c], c))[:budget]
  kept = set(alphabet)
  words = []  # [symbols, count]: words with a character outside the alphabet are left out
  for word, n in sorted(counts.items()):
    symbols = [c if k == 0 else CONTINUATION + c for k, c in enumerate(word)]
    if all(s in kept for s in symbols):
      words.append((symbols, n))
  pieces = sorted(alphabet)
  known = set(pieces)
  pair_count: dict[tuple[str, str], int] = {}
  where: dict[tuple[str, str], set[int]] = {}
  for w, (symbols, n) in enumerate(words):
    for pair in zip(symbols, symbols[1:]):
      pair_count[pair] = pair_count.get(pair, 0) + n
      where.setdefault(pair, set()).add(w)
  heap = [(-n, pair) for pair, n in pair_count.items()]
  heapq.heapify(heap)
  while len(pieces) < budget and heap:
    neg, pair = heapq.heappop(heap)
    if pair_count.get(pair, 0) != -neg or neg == 0:
      continue  # a stale entry
    merged = pair[0] + pair[1][len(CONTINUATION):]
    changed = set()
    for w in sorted(where.pop(pair, ())):
      symbols, n = words[w]
      for old in zip(symbols, symbols[1:]):
        pair_count[old] -= n
        changed.add(old)
      out, k = [], 0
      while k < len(symbols):
        if k + 1 < len(symbols) and (symbols[k], symbols[k + 1]) == pair:
          out.append(merged)
          k += 2
        else:
          out.append(symbols[k])
          k += 1
      words[w] = (out, n)
      for new in zip(out, out[1:]):
        pair_count[new] = pair_count.get(new, 0) + n
        where.setdefault(new, set()).add(w)
        changed.add(new)
    pair_count.pop(pair, None)
    for c in changed:
      if pair_count.get(c, 0) > 0:
        heapq.heappush(heap, (-pair_count[c], c))
    if merged not in known:
      known.add(merged)
      pieces.append(merged)
  return pieces


def train_wordpiece(input_files: Sequence[str] | str, vocab_size: int, out_path: str,
                    lowercase: bool = True, *, max_sentences: int = 2_000_000) -> str:
  """Trains a WordPiece vocabulary (specials at ids 0..4) -> `out_path`.

  `out_path` ending in `.txt` gets BERT's vocab.txt, else the `tokenizer.json`;
  written atomically. The first `max_sentences` non-blank lines are used; the
  result depends on nothing else (HF's trainer breaks ties by hash order).
  A corpus too small for `vocab_size` pieces is topped up with BERT's
  `[unusedN]` pieces (never produced from text), so the size is always `vocab_size`.
  """
  if vocab_size <= len(SPECIAL_PIECES) + 1:
    raise ValueError(f"vocab_size must be > {len(SPECIAL_PIECES) + 1}, got {vocab_size}")
  paths = files.expand(input_files)
  check_nonempty(paths)

  def lines():
    n = 0
    for path in paths:
      for line in files.read_lines(path):
        if line.strip():
          yield line
          n += 1
          if n >= max_sentences:
            return

  counts = _word_counts(lines(), bool(lowercase))
  vocab = list(SPECIAL_PIECES) + _merge_pieces(counts, vocab_size - len(SPECIAL_PIECES))
  if len(vocab) < vocab_size:
    logging.warning("WordPiece training found %d pieces in %s; adding %d [unusedN] pieces to "
                    "reach vocab_size=%d", len(vocab), paths, vocab_size - len(vocab), vocab_size)
    vocab += [f"[unused{i}]" for i in range(vocab_size - len(vocab))]
  tok = WordPieceTokenizer(vocab, lowercase, model_path=out_path)
  if os.fspath(out_path).endswith(".txt"):
    files.atomic_write(os.fspath(out_path), tok.vocab_txt().encode("utf-8"))
  else:
    tok.save(out_path)
  return os.fspath(out_path)
