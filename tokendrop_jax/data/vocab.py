"""What both tokenizer kinds share: BERT's special pieces (found by name, at any ids),
the file a workdir keeps each kind in, where a word starts, and the check of a corpus
to train on. `tokenizer.py` (SentencePiece) and `wordpiece.py` both build on this.
"""
from __future__ import annotations

from tokendrop_jax import files

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_PIECES = (PAD, UNK, CLS, SEP, MASK)  # the order of `special_ids`; ids 0..4 when we train
SENTENCEPIECE, WORDPIECE = "sentencepiece", "wordpiece"
SAVED_NAMES = {SENTENCEPIECE: "tokenizer.model", WORDPIECE: "tokenizer.json"}  # in a workdir
CONTINUATION = "##"   # WordPiece: a piece inside a word
WORD_START = "\u2581"  # SentencePiece: a piece that begins a word (escaped space)


def is_word_start(piece: str, kind: str) -> bool:
  """Whether `piece` begins a word (whole-word masking); specials are the caller's."""
  if kind == WORDPIECE:
    return not piece.startswith(CONTINUATION)
  if kind == SENTENCEPIECE:
    return piece.startswith(WORD_START)
  raise ValueError(f"unknown tokenizer kind {kind!r}")


def find_special_ids(piece_to_id, where: str, hint: str = "") -> tuple[int, ...]:
  """(pad, unk, cls, sep, mask) ids by name; `piece_to_id` returns None when absent."""
  out = []
  for piece in SPECIAL_PIECES:
    i = piece_to_id(piece)
    if i is None:
      raise ValueError(f"{where}: the special token {piece} is missing{hint}")
    out.append(int(i))
  return tuple(out)


def check_nonempty(paths: list[str]) -> None:
  """Fails early (before SentencePiece's own opaque error) on an empty corpus."""
  for path in paths:
    for line in files.read_lines(path):
      if line.strip():
        return
  raise ValueError(f"empty corpus: no non-blank line in {paths}")
