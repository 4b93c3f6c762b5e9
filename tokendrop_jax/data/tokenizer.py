"""Tokenizers with BERT's special tokens, found by name at any ids.

  piece    role
  [PAD]    padding (never a real token)
  [UNK]    unknown piece
  [CLS]    first token of every packed sequence
  [SEP]    end of a sequence, and between documents packed together
  [MASK]   masked-LM replacement

Two kinds, one interface (`kind`, `vocab_size`, the five ids, `special_ids`,
`encode`/`encode_batch`/`decode`, `id_to_piece`/`piece_to_id`, pickled by content):

  `Tokenizer`           a SentencePiece `.model` (unigram or BPE). Ours have the
                        specials at ids 0..4; any model with them as control
                        symbols (and [UNK] as its unknown piece) works.
  `WordPieceTokenizer`  BERT's WordPiece (a `vocab.txt`, cased or uncased, or an
                        HF `tokenizer.json`), through Hugging Face `tokenizers`
                        (wordpiece.py, with its trainer); BERT's vocab has [PAD] 0,
                        [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103.

`encode` never produces [CLS]/[SEP]/[MASK] from text, even if the text contains
the literal string "[MASK]" (SentencePiece: control symbols; WordPiece: the
specials are not added tokens, so the brackets split off as punctuation). The
rest of the code reads the ids from a tokenizer (or the corpus metadata), never
from literals. `load_tokenizer` opens any of the three file forms; a workdir
holds `tokenizer.model` or `tokenizer.json` (`vocab.SAVED_NAMES`).
"""
from __future__ import annotations

import io
import os
import re
from typing import Iterator, Sequence

import sentencepiece as spm

from tokendrop_jax import files
from tokendrop_jax.data.vocab import (CLS, MASK, PAD, SAVED_NAMES, SENTENCEPIECE, SEP,
                                      SPECIAL_PIECES, UNK, check_nonempty, find_special_ids,
                                      is_word_start)
from tokendrop_jax.data.wordpiece import WordPieceTokenizer

def _training_sentences(paths: list[str], errors: list[Exception]) -> Iterator[str]:
  try:
    for path in paths:
      for line in files.read_lines(path):
        if line.strip():
          yield line
  except Exception as e:  # sentencepiece would re-raise it as an opaque RuntimeError
    errors.append(e)
    raise


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
  paths = files.expand(input_files)
  check_nonempty(paths)
  model = io.BytesIO()
  errors = []
  try:
    _train(_training_sentences(paths, errors), model, vocab_size, model_type,
           character_coverage, max_sentences, seed_sentencepiece_size, num_threads)
  except RuntimeError as e:
    if errors:
      raise errors[0] from None
    most = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)",
                     str(e))
    if most:  # the corpus has too few distinct pieces: name the field, not the trainer
      raise ValueError(
          f"model.vocab_size={vocab_size}: the text in {', '.join(paths[:3])}"
          f"{' ...' if len(paths) > 3 else ''} gives a {model_type} tokenizer at most "
          f"{most.group(1)} pieces; set --config.model.vocab_size={most.group(1)} or less, or "
          "train on more text") from None
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
  """A loaded SentencePiece model; its specials are found by name on load."""

  kind = SENTENCEPIECE
  file_name = SAVED_NAMES[SENTENCEPIECE]

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
    self._sp, self._proto = sp, proto
    self.vocab_size = sp.get_piece_size()

    def find(piece):  # piece_to_id answers unk's id for an absent piece
      i = sp.piece_to_id(piece)
      return i if sp.id_to_piece(i) == piece else None

    hint = " (train the model with tokendrop_jax.data.tokenizer.train_tokenizer)"
    self.special_ids = find_special_ids(find, self.model_path, hint)
    self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = self.special_ids
    if not sp.is_unknown(self.unk_id):
      raise ValueError(f"{self.model_path}: {UNK} (id {self.unk_id}) is not the model's unknown "
                       f"piece{hint}")
    for piece, i in zip(SPECIAL_PIECES, self.special_ids):
      if piece != UNK and not sp.is_control(i):
        # A normal or user-defined piece would be produced from text such as "[MASK]".
        raise ValueError(f"{self.model_path}: the special token {piece} (id {i}) is not a "
                         f"control symbol{hint}")

  # Pickled by content, so it can travel to grain workers / other processes.
  def __getstate__(self):
    return {"model_path": self.model_path, "proto": self._proto}

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

  def is_word_start(self, piece: str) -> bool:
    return is_word_start(piece, self.kind)

  def serialized_model_proto(self) -> bytes:
    return self._sp.serialized_model_proto()

  def serialized(self) -> bytes:
    """The bytes of this tokenizer's file (`file_name`), as loaded."""
    return self._proto

  def __repr__(self):
    return f"Tokenizer({self.model_path!r}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str, lowercase: bool | None = None) -> Tokenizer | WordPieceTokenizer:
  """The tokenizer in `path`: a SentencePiece `.model`, an HF `tokenizer.json` (WordPiece)
  or BERT's `vocab.txt` (`lowercase` None: inferred from the vocabulary)."""
  path = os.fspath(path)
  name = os.path.basename(path)
  if name.endswith(".model"):
    if lowercase is not None:
      raise ValueError(f"{path}: lowercase={lowercase} is for WordPiece vocabularies; a "
                       "SentencePiece model does its own normalisation (leave it unset)")
    return Tokenizer(path)
  if name.endswith(".json"):
    return WordPieceTokenizer.from_json(path, lowercase)
  if name.endswith(".txt"):
    return WordPieceTokenizer.from_vocab(path, lowercase)
  raise ValueError(f"{path}: unknown tokenizer file; expected a SentencePiece .model, an HF "
                   "tokenizer.json or BERT's vocab.txt")
