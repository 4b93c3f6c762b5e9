"""SentencePiece tokenizer with BERT's special tokens at fixed ids.

  id  piece    role
  0   [PAD]    padding (never a real token)
  1   [UNK]    unknown piece
  2   [CLS]    first token of every packed sequence
  3   [SEP]    end of a sequence, and between documents packed together
  4   [MASK]   masked-LM replacement

They are SentencePiece *control* symbols (PAD/UNK are its reserved pad/unk),
so `encode` never produces [CLS]/[SEP]/[MASK] from text, even if the text
contains the literal string "[MASK]". The rest of the code reads these ids
from a `Tokenizer` (or the corpus metadata), never from literals.
"""
from __future__ import annotations

import gzip
import io
import os
from typing import Iterator, Sequence

import sentencepiece as spm

from tokendrop_jax import files

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_PIECES = (PAD, UNK, CLS, SEP, MASK)  # index == id


def expand_files(patterns: Sequence[str] | str, what: str = "input_files") -> list[str]:
  """Expands paths/globs (local or gs://) in order; a pattern that matches nothing
  is an error."""
  if isinstance(patterns, (str, os.PathLike)):
    patterns = [patterns]
  out = []
  for p in patterns:
    p = os.fspath(p)
    matches = files.glob(p) if files.has_magic(p) else ([p] if files.exists(p) else [])
    if not matches:
      raise FileNotFoundError(f"{what}: no file matches {p!r}")
    for m in matches:
      if files.isdir(m):
        raise IsADirectoryError(f"{what}: {m!r} is a directory, expected a text file")
    out.extend(matches)
  if not out:
    raise ValueError(f"{what}: no input files given")
  return out


def read_lines(path: str) -> Iterator[str]:
  """Lines of a .txt or .txt.gz file (local or gs://) without the newline; names the
  file on bad UTF-8."""
  lineno = 0
  try:
    with files.open(path, "rb") as raw_file:
      f = gzip.GzipFile(fileobj=raw_file) if path.endswith(".gz") else raw_file
      for lineno, raw in enumerate(f, 1):  # decoded per line: errors carry the line number
        yield raw.decode("utf-8").rstrip("\r\n")
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not valid UTF-8 at line {lineno}: {e}") from None
  except (OSError, EOFError) as e:  # e.g. a truncated or fake .gz
    raise ValueError(f"{path}: cannot read: {e}") from None


def _training_sentences(paths: list[str], errors: list[Exception]) -> Iterator[str]:
  try:
    for path in paths:
      for line in read_lines(path):
        if line.strip():
          yield line
  except Exception as e:  # sentencepiece would re-raise it as an opaque RuntimeError
    errors.append(e)
    raise


def _check_nonempty(paths: list[str]) -> None:
  """Fails early (before SentencePiece's own opaque error) on an empty corpus."""
  for path in paths:
    for line in read_lines(path):
      if line.strip():
        return
  raise ValueError(f"empty corpus: no non-blank line in {paths}")


def train_tokenizer(input_files: Sequence[str] | str, vocab_size: int, model_prefix: str,
                    model_type: str = "unigram", *, max_sentences: int = 2_000_000,
                    character_coverage: float = 0.9995, seed_sentencepiece_size: int = 1_000_000,
                    num_threads: int | None = None) -> str:
  """Trains a SentencePiece model with the specials at ids 0..4 -> path of `.model`.

  `input_files` are paths or globs of .txt/.txt.gz (one sentence per line).
  The model is written to `<model_prefix>.model` atomically (temp file + rename).
  At most `max_sentences` lines (sampled by SentencePiece) are used.
  """
  if model_type not in ("unigram", "bpe"):
    raise ValueError(f"model_type must be 'unigram' or 'bpe', got {model_type!r}")
  if vocab_size <= len(SPECIAL_PIECES) + 1:
    raise ValueError(f"vocab_size must be > {len(SPECIAL_PIECES) + 1}, got {vocab_size}")
  paths = expand_files(input_files)
  _check_nonempty(paths)
  model = io.BytesIO()
  errors = []
  try:
    _train(_training_sentences(paths, errors), model, vocab_size, model_type,
           character_coverage, max_sentences, seed_sentencepiece_size, num_threads)
  except RuntimeError:
    if errors:
      raise errors[0] from None
    raise
  path = model_prefix + ".model"
  files.atomic_write(path, model.getvalue())
  Tokenizer(path)  # fails loudly if the specials did not land at their ids
  return path


def _train(sentences, model, vocab_size, model_type, character_coverage, max_sentences,
           seed_sentencepiece_size, num_threads):
  spm.SentencePieceTrainer.train(
      sentence_iterator=sentences,
      model_writer=model,
      vocab_size=vocab_size,
      model_type=model_type,
      pad_id=0, pad_piece=PAD,
      unk_id=1, unk_piece=UNK,
      bos_id=-1, eos_id=-1,
      control_symbols=[CLS, SEP, MASK],  # ids 2, 3, 4: right after pad/unk
      character_coverage=character_coverage,
      input_sentence_size=max_sentences,
      shuffle_input_sentence=True,
      seed_sentencepiece_size=seed_sentencepiece_size,
      max_sentence_length=1 << 14,
      num_threads=num_threads or os.cpu_count() or 1,
      minloglevel=2,
  )


class Tokenizer:
  """A loaded SentencePiece model whose special ids are checked on load."""

  def __init__(self, model_path: str):
    self.model_path = os.fspath(model_path)
    if not files.isfile(self.model_path):
      raise FileNotFoundError(f"tokenizer model not found: {self.model_path!r}")
    self._load(files.read_bytes(self.model_path))

  def _load(self, proto: bytes) -> None:
    sp = spm.SentencePieceProcessor()
    try:
      sp.LoadFromSerializedProto(proto)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError variously
      raise ValueError(f"{self.model_path}: not a SentencePiece model: {e}") from None
    self._sp = sp
    self.vocab_size = sp.get_piece_size()
    for i, piece in enumerate(SPECIAL_PIECES):
      found = sp.id_to_piece(i) if i < self.vocab_size else None
      if found != piece:
        raise ValueError(
            f"{self.model_path}: special token {piece} must have id {i}, found {found!r} there "
            f"(train the model with tokendrop_jax.data.tokenizer.train_tokenizer)")
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = range(len(SPECIAL_PIECES))
    self.special_ids = (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)

  # Pickled by content, so it can travel to grain workers / other processes.
  def __getstate__(self):
    return {"model_path": self.model_path, "proto": self.serialized_model_proto()}

  def __setstate__(self, state):
    self.model_path = state["model_path"]
    self._load(state["proto"])

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, no special tokens added."""
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
    return self._sp.encode(list(texts), out_type=int, num_threads=num_threads)

  def decode(self, ids: Sequence[int]) -> str:
    return self._sp.decode([int(i) for i in ids])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def piece_to_id(self, piece: str) -> int:
    return self._sp.piece_to_id(piece)

  def serialized_model_proto(self) -> bytes:
    return self._sp.serialized_model_proto()

  def __repr__(self):
    return f"Tokenizer({self.model_path!r}, vocab_size={self.vocab_size})"
