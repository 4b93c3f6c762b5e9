"""The config fields that have a syntax of their own, read in one place.

`data.sources` (a weighted mixture) and the tokenizer fields (`tokenizer_model`,
`tokenizer_type`, `lowercase`) are parsed at run time by the input, prepare and
fine-tuning code and checked by `config_checks` before any compile: both use
these functions, so a value is read, and refused, the same way everywhere.
"""
from __future__ import annotations

# data.tokenizer_type: a SentencePiece model type, or BERT's WordPiece (trained when
# data.tokenizer_model is unset). data.tokenizer_model: one of these files.
TOKENIZER_TYPES = ("unigram", "bpe", "wordpiece")
TOKENIZER_SUFFIXES = (".model", ".json", ".txt")  # SentencePiece, HF tokenizer.json, vocab.txt


def lowercase_option(value, field: str = "data.lowercase") -> bool | None:
  """`data.lowercase` -> the tokenizer's argument: a bool, or None (infer)."""
  if value is None or (isinstance(value, str) and value == "auto"):
    return None
  if isinstance(value, bool):
    return value
  raise ValueError(f"{field} must be True, False or 'auto', got {value!r}")


def lowercase_name(value):
  """One spelling of each `data.lowercase` value (None == 'auto'), for resume checks."""
  option = lowercase_option(value)
  return "auto" if option is None else option


def check_tokenizer_fields(data) -> None:
  """data.tokenizer_model / tokenizer_type / lowercase, before any file is read."""
  lowercase = lowercase_option(data.lowercase)
  model = data.tokenizer_model
  if model and not model.endswith(TOKENIZER_SUFFIXES):
    raise ValueError(f"data.tokenizer_model={model!r}: expected a SentencePiece .model, an HF "
                     "tokenizer.json or BERT's vocab.txt (the file name's ending says which)")
  if "tokenizer_type" in data and data.tokenizer_type not in TOKENIZER_TYPES:
    raise ValueError(f"data.tokenizer_type must be one of {TOKENIZER_TYPES}, got "
                     f"{data.tokenizer_type!r}")
  # Fine-tuning without data.tokenizer_model reads INIT_FROM's file, which says its kind.
  sentencepiece = (model.endswith(".model") if model else
                   "tokenizer_type" in data and data.tokenizer_type != "wordpiece")
  if lowercase is not None and sentencepiece:
    what = (f"data.tokenizer_model={model!r}" if model else
            f"data.tokenizer_type={data.tokenizer_type!r}")
    raise ValueError(f"data.lowercase={lowercase} is for WordPiece tokenizers, but {what} is "
                     "SentencePiece (it normalises text itself): leave data.lowercase 'auto'")


TFDS_PREFIX = "tfds:"  # a data.sources member that is a TFDS dataset: tfds:NAME@WEIGHT


def tfds_member(pattern: str) -> str:
  """The TFDS name of a `data.sources` member 'tfds:NAME', or '' for a file pattern."""
  return pattern[len(TFDS_PREFIX):] if pattern.startswith(TFDS_PREFIX) else ""


def mixture_sources(spec: str) -> list[tuple[str, float]]:
  """`data.sources` 'PATTERN@WEIGHT,PATTERN@WEIGHT,...' -> [(pattern, weight)].

  Weights are relative (they need not sum to 1); each must be > 0. A pattern
  'tfds:NAME' is a TFDS text dataset (its `data.tfds_train_split`, field
  `data.tfds_text_field`, prepared as ArrayRecord in `data.tfds_data_dir`).
  """
  out = []
  for entry in spec.split(","):
    pattern, _, weight = entry.strip().rpartition("@")
    try:
      value = float(weight)
    except ValueError:
      value = float("nan")
    if pattern == TFDS_PREFIX:
      raise ValueError(f"data.sources: {entry.strip()!r} names no TFDS dataset; expected "
                       "e.g. 'tfds:wikipedia/20230601.en@0.7'")
    if not pattern or not 0 < value < float("inf"):
      raise ValueError(f"data.sources: {entry.strip()!r} is not PATTERN@WEIGHT with a weight > 0; "
                       "expected e.g. 'gs://b/wiki/*.parquet@0.7,gs://b/books/*.txt@0.3'")
    out.append((pattern, value))
  return out
