"""Documents (lists of sentences) from one text file, by its format.

The formats a `TextFiles` source may hold (local or gs://), chosen by the file
name: .txt / .txt.gz (or any other name): one sentence per line, a blank line
between documents; .jsonl / .json (optionally .gz): one JSON object per line, a
document per record; .parquet: a document per row, read one row group at a time.
Records' text (field `text_field`) is split into sentences at line breaks and
sentence ends (`split_sentences`). Apart from the sources so that a format is
read, checked and named in one place.
"""
from __future__ import annotations

import json
import os
import re
from typing import Iterator

from tokendrop_jax import files

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")


def file_format(path: str) -> str:
  """'parquet', 'jsonl' (.jsonl/.json, optionally .gz) or 'text' (any other name)."""
  name = os.fspath(path).lower()
  if name.endswith(".parquet"):
    return "parquet"
  if name.removesuffix(".gz").endswith((".jsonl", ".json")):
    return "jsonl"
  return "text"


def read_documents(path: str, text_field: str = "text") -> Iterator[list[str]]:
  """The documents of one file (local or gs://), by its `file_format`."""
  kind = file_format(path)
  if kind == "parquet":
    texts = _parquet_texts(path, text_field)
  elif kind == "jsonl":
    texts = _jsonl_texts(path, text_field)
  else:
    yield from _text_documents(path)
    return
  for text in texts:
    doc = split_sentences(text)
    if doc:
      yield doc


def _text_documents(path: str) -> Iterator[list[str]]:
  doc = []
  for line in files.read_lines(path):
    line = line.strip()
    if line:
      doc.append(line)
    elif doc:
      yield doc
      doc = []
  if doc:  # a file boundary ends a document
    yield doc


def _record_text(record, text_field: str, where: str) -> str:
  if not isinstance(record, dict):
    raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
  if text_field not in record:
    raise KeyError(f"{where}: no text field {text_field!r}; fields: {sorted(record)}")
  text = record[text_field]
  if text is not None and not isinstance(text, str):
    raise ValueError(f"{where}: field {text_field!r} holds {type(text).__name__}, not text")
  return text or ""


def _jsonl_texts(path: str, text_field: str, limit: int | None = None) -> Iterator[str]:
  n = 0
  for lineno, line in enumerate(files.read_lines(path), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: line {lineno} is not JSON (JSON lines: one object per "
                       f"line): {e}") from None
    yield _record_text(record, text_field, f"{path}: line {lineno}")
    n += 1
    if limit is not None and n >= limit:
      return


def _parquet_file(f, path: str, text_field: str):
  """A pyarrow ParquetFile of the open file `f`, checked to have a text column `text_field`."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  try:
    pf = pq.ParquetFile(f)
  except (pa.ArrowException, OSError) as e:
    raise ValueError(f"{path}: cannot read as Parquet: {e}") from None
  schema = pf.schema_arrow
  if text_field not in schema.names:
    raise KeyError(f"{path}: no text field {text_field!r}; columns: {schema.names}")
  kind = schema.field(text_field).type
  if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
          or pa.types.is_string_view(kind)):
    raise ValueError(f"{path}: column {text_field!r} holds {kind}, not text")
  return pf


def _parquet_texts(path: str, text_field: str) -> Iterator[str]:
  """The text column, one row group at a time (a file may be larger than memory)."""
  with files.open(path, "rb") as f:
    pf = _parquet_file(f, path, text_field)
    for group in range(pf.num_row_groups):
      for text in pf.read_row_group(group, columns=[text_field]).column(0).to_pylist():
        if text:
          yield text


def check_file(path: str, text_field: str = "text") -> None:
  """Fails (naming the file) if a .jsonl/.parquet file lacks a text field `text_field`.

  Cheap: a Parquet file's footer, a JSON-lines file's first record. Plain text
  is not read here.
  """
  kind = file_format(path)
  if kind == "parquet":
    with files.open(path, "rb") as f:
      _parquet_file(f, path, text_field)
  elif kind == "jsonl":
    for _ in _jsonl_texts(path, text_field, limit=1):
      pass


def split_sentences(text: str) -> list[str]:
  """Free text -> sentences: at line breaks, then after . ! ? before a capital."""
  out = []
  for line in text.splitlines():
    line = line.strip()
    if line:
      out.extend(s for s in _SENTENCE_END.split(line) if s.strip())
  return out
