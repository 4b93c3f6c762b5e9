"""GLUE tasks: specs, readers (GLUE TSV files or TFDS `glue/<task>`), encoding, metrics.

Everything here is plain Python/numpy: the fine-tuning loop turns a task's
examples into fixed-shape int32 arrays once, and scores dev predictions on the host.

Label ids follow TFDS `glue/<task>` (e.g. MNLI: entailment 0, neutral 1,
contradiction 2), so a model fine-tuned on TSVs and one fine-tuned on TFDS agree;
`TaskSpec.label_names[i]` is what GLUE's submission format expects for class i.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import sys
from typing import Callable, Optional, Sequence

import numpy as np

from tokendrop_jax import files

# GLUE's TSVs hold sentences longer than csv's default 128 KiB field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One GLUE task: where its text and labels live and how it is scored."""
  name: str                        # config variant / TFDS config name
  tsv_text: tuple[str, ...]        # text column(s) in GLUE's TSV header: a, (b)
  tfds_text: tuple[str, ...]       # the same columns in TFDS glue/<task>
  tsv_label: str                   # label column in GLUE's TSV header
  label_names: tuple[str, ...]     # class i's name in the TSVs and in submissions; () = regression
  metrics: tuple[str, ...]         # the task's metrics; their mean is the score
  eval_splits: tuple[str, ...] = ("validation",)  # TFDS dev split(s); the first picks "best"
  # GLUE's CoLA train/dev TSVs have no header: their fixed columns.
  headerless_columns: tuple[str, ...] = ()

  @property
  def num_labels(self) -> int:
    return len(self.label_names) or 1

  @property
  def is_regression(self) -> bool:
    return not self.label_names


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
TASKS: dict[str, TaskSpec] = {t.name: t for t in (
    TaskSpec("cola", ("sentence",), ("sentence",), "label", _BINARY, ("matthews_corr",),
             headerless_columns=("source", "label", "original_label", "sentence")),
    TaskSpec("sst2", ("sentence",), ("sentence",), "label", _BINARY, ("accuracy",)),
    TaskSpec("mrpc", ("#1 String", "#2 String"), ("sentence1", "sentence2"), "Quality", _BINARY,
             ("f1", "accuracy")),
    TaskSpec("qqp", ("question1", "question2"), ("question1", "question2"), "is_duplicate",
             _BINARY, ("f1", "accuracy")),
    TaskSpec("stsb", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "score", (),
             ("pearson", "spearman")),
    TaskSpec("mnli", ("sentence1", "sentence2"), ("premise", "hypothesis"), "gold_label",
             ("entailment", "neutral", "contradiction"), ("accuracy",),
             eval_splits=("validation_matched", "validation_mismatched")),
    TaskSpec("qnli", ("question", "sentence"), ("question", "sentence"), "label", _NLI2,
             ("accuracy",)),
    TaskSpec("rte", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", _NLI2,
             ("accuracy",)),
    TaskSpec("wnli", ("sentence1", "sentence2"), ("sentence1", "sentence2"), "label", _BINARY,
             ("accuracy",)),
)}
STSB_RANGE = (0.0, 5.0)


def get_task(name: str) -> TaskSpec:
  key = name.lower().replace("-", "")
  if key not in TASKS:
    raise ValueError(f"unknown GLUE task {name!r}; expected one of {', '.join(TASKS)}")
  return TASKS[key]


@dataclasses.dataclass
class Examples:
  """Raw text examples of one split; `labels` None where the split has none."""
  text_a: list[str]
  text_b: Optional[list[str]]
  labels: Optional[np.ndarray]  # int32 [N] (float32 for STS-B)
  index: list[str]              # id per example (the file's index column, else 0..N-1)
  source: str                   # file or TFDS split, for messages

  def __len__(self) -> int:
    return len(self.text_a)


# ---------------------------------------------------------------------------
# Labels.


def parse_label(spec: TaskSpec, value: str, where: str):
  """A TSV label string -> class id (float score for STS-B); ValueError naming `where`."""
  v = value.strip()
  if spec.is_regression:
    try:
      x = float(v)
    except ValueError:
      raise ValueError(f"{where}: label {value!r} is not a number "
                       f"(column {spec.tsv_label!r} of task {spec.name})") from None
    if not (STSB_RANGE[0] <= x <= STSB_RANGE[1]):
      raise ValueError(f"{where}: label {value!r} out of range {list(STSB_RANGE)} for "
                       f"task {spec.name}")
    return x
  if v in spec.label_names:
    return spec.label_names.index(v)
  raise ValueError(f"{where}: label {value!r} out of range for task {spec.name}; expected one "
                   f"of {list(spec.label_names)} in column {spec.tsv_label!r}")


def format_label(spec: TaskSpec, value) -> str:
  """A prediction as GLUE's submission files write it."""
  if spec.is_regression:
    return f"{float(np.clip(value, *STSB_RANGE)):.3f}"
  return spec.label_names[int(value)]


# ---------------------------------------------------------------------------
# Readers.


def read_tsv(path: str, spec: TaskSpec, *, require_labels: bool = True) -> Examples:
  """Reads a GLUE TSV (header line, `csv.QUOTE_NONE` as GLUE's own scripts do).

  Columns are found by name, so any column order and extra columns are fine.
  With `require_labels=False` (prediction inputs) a label column is optional
  and ignored. Errors name the file, and the line for bad rows.
  """
  if not files.isfile(path):
    raise FileNotFoundError(f"GLUE {spec.name} file not found: {path}")
  text = files.read_bytes(path).decode("utf-8")  # whole: a bucket's file has no newline=""
  rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
  if not rows:
    raise ValueError(f"{path}: empty file; expected a header line with columns "
                     f"{_expected(spec, require_labels)}")
  header, body, first_line = rows[0], rows[1:], 2
  if (spec.headerless_columns and len(header) == len(spec.headerless_columns)
      and not set(spec.tsv_text) & set(header)):
    header, body, first_line = list(spec.headerless_columns), rows, 1  # CoLA train/dev
  header = [h.strip() for h in header]
  needed = list(spec.tsv_text) + ([spec.tsv_label] if require_labels else [])
  missing = [c for c in needed if c not in header]
  if missing:
    raise ValueError(
        f"{path}: header {header} lacks column(s) {missing} of task {spec.name}; expected "
        f"{_expected(spec, require_labels)} (tab-separated, in any order, extra columns allowed)")
  col = {c: header.index(c) for c in header}
  text_cols = [col[c] for c in spec.tsv_text]
  label_col = col.get(spec.tsv_label) if require_labels else None
  index_col = col.get("index", col.get("id"))
  texts: list[list[str]] = [[] for _ in text_cols]
  labels, index = [], []
  for i, row in enumerate(body):
    line = i + first_line
    if not row or (len(row) == 1 and not row[0].strip()):
      continue  # a trailing blank line
    if len(row) != len(header):
      raise ValueError(f"{path}:{line}: {len(row)} tab-separated fields, the header has "
                       f"{len(header)}")
    for t, c in zip(texts, text_cols):
      t.append(row[c])
    if label_col is not None:
      labels.append(parse_label(spec, row[label_col], f"{path}:{line}"))
    index.append(row[index_col].strip() if index_col is not None else str(len(index)))
  if not texts[0]:
    raise ValueError(f"{path}: no examples after the header")
  label_arr = None
  if label_col is not None:
    label_arr = np.asarray(labels, np.float32 if spec.is_regression else np.int32)
  return Examples(texts[0], texts[1] if len(texts) > 1 else None, label_arr, index, path)


def _expected(spec: TaskSpec, with_label: bool) -> list[str]:
  return list(spec.tsv_text) + ([spec.tsv_label] if with_label else [])


def _text(v) -> str:
  return v.decode("utf-8") if isinstance(v, (bytes, np.bytes_)) else str(v)


def read_tfds(spec: TaskSpec, split: str, data_dir: Optional[str] = None) -> Examples:
  """Reads `glue/<task>` through `tfds.data_source` (needs the array_record format).

  Test splits carry label -1 in TFDS: they come back with `labels=None`.
  """
  import tensorflow_datasets as tfds  # Heavy; only when TFDS is the source.
  try:  # Registers the builder so prepared data (and mocks) resolve without TF.
    import tensorflow_datasets.text.glue  # noqa: F401  pylint: disable=unused-import
  except ImportError:
    pass
  name = f"glue/{spec.name}"
  try:
    # download=False: never fetch GLUE from the web here (no network on pods; hangs).
    source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(
        f"cannot open TFDS {name} split {split!r} (data_dir={data_dir!r}): {type(e).__name__}: "
        f"{e}. Prepare it as array_record (tfds build glue/{spec.name} --file_format="
        "array_record) or pass GLUE TSVs with --config.train_file/--config.eval_file") from None
  keys = list(range(len(source)))
  try:
    records = list(source.__getitems__(keys))  # one batched read of the ArrayRecord files
  except (AttributeError, TypeError):  # sources without batched reads (tfds mocks)
    records = [source[i] for i in keys]
  where = f"tfds {name}[{split}]"
  if not records:
    raise ValueError(f"{where}: no examples")
  texts = [[_text(r[c]) for r in records] for c in spec.tfds_text]
  raw = np.asarray([r["label"] for r in records])
  idx = [str(int(r["idx"])) if "idx" in r else str(i) for i, r in enumerate(records)]
  labels = None
  if spec.is_regression:
    labels = raw.astype(np.float32)
  elif not np.all(raw == -1):
    bad = np.flatnonzero((raw < 0) | (raw >= spec.num_labels))
    if bad.size:
      raise ValueError(f"{where}: example {int(bad[0])} has label {raw[bad[0]]}, out of range "
                       f"[0, {spec.num_labels})")
    labels = raw.astype(np.int32)
  return Examples(texts[0], texts[1] if len(texts) > 1 else None, labels, idx, where)


# ---------------------------------------------------------------------------
# Encoding.


def truncate_pair(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
  """Lengths after trimming the longer side first (BERT's `_truncate_seq_pair`)."""
  while len_a + len_b > budget:
    if len_a > len_b:
      len_a -= 1
    else:
      len_b -= 1
  return len_a, len_b


def frame(ids_a: Sequence[int], ids_b: Optional[Sequence[int]], max_seq_len: int,
          cls_id: int, sep_id: int, pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`[CLS] a [SEP] (b [SEP])` padded to `max_seq_len` -> (ids, mask, token types), int32 [S]."""
  if ids_b is None:
    a, b = list(ids_a)[:max_seq_len - 2], []
  else:
    na, nb = truncate_pair(len(ids_a), len(ids_b), max_seq_len - 3)
    a, b = list(ids_a)[:na], list(ids_b)[:nb]
  first = [cls_id] + a + [sep_id]
  second = b + [sep_id] if ids_b is not None else []
  n = len(first) + len(second)
  ids = np.full(max_seq_len, pad_id, np.int32)
  ids[:n] = first + second
  mask = np.zeros(max_seq_len, np.int32)
  mask[:n] = 1
  types = np.zeros(max_seq_len, np.int32)
  types[len(first):n] = 1
  return ids, mask, types


def encode(examples: Examples, tokenizer, max_seq_len: int) -> dict[str, np.ndarray]:
  """Examples -> `input_ids, input_mask, token_type_ids` int32 [N, S] (+ `labels` [N])."""
  if max_seq_len < 3:
    raise ValueError(f"max_seq_len must be >= 3 for [CLS] a [SEP], got {max_seq_len}")
  ids_a = tokenizer.encode_batch(examples.text_a)
  ids_b = tokenizer.encode_batch(examples.text_b) if examples.text_b is not None else None
  rows = [frame(a, ids_b[i] if ids_b is not None else None, max_seq_len, tokenizer.cls_id,
                tokenizer.sep_id, tokenizer.pad_id) for i, a in enumerate(ids_a)]
  out = {k: np.stack([r[j] for r in rows]) for j, k in
         enumerate(("input_ids", "input_mask", "token_type_ids"))}
  if examples.labels is not None:
    out["labels"] = examples.labels
  return out


# ---------------------------------------------------------------------------
# Metrics (pure numpy; `labels` [N], `predictions` [N] class ids or scores).


def accuracy(labels, predictions) -> float:
  return float(np.mean(np.asarray(labels) == np.asarray(predictions)))


def f1(labels, predictions) -> float:
  """Binary F1 of the positive class 1 (0 when there is no positive at all)."""
  y, p = np.asarray(labels) == 1, np.asarray(predictions) == 1
  tp = float(np.sum(y & p))
  denom = float(np.sum(y) + np.sum(p))
  return 2 * tp / denom if denom else 0.0


def matthews_corr(labels, predictions) -> float:
  """Binary Matthews correlation; 0 where a marginal is empty (as scikit-learn)."""
  y, p = np.asarray(labels) == 1, np.asarray(predictions) == 1
  tp, tn = float(np.sum(y & p)), float(np.sum(~y & ~p))
  fp, fn = float(np.sum(~y & p)), float(np.sum(y & ~p))
  denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return float((tp * tn - fp * fn) / denom) if denom else 0.0


def pearson(x, y) -> float:
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  xc, yc = x - x.mean(), y - y.mean()
  denom = np.sqrt(np.sum(xc * xc) * np.sum(yc * yc))
  return float(np.sum(xc * yc) / denom) if denom else 0.0


def rank(x) -> np.ndarray:
  """1-based ranks, ties get their average rank (as scipy.stats.rankdata)."""
  x = np.asarray(x)
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  # Start of each run of equal values; a run's average rank is (first + last) / 2.
  starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
  ends = np.r_[starts[1:], len(x)]
  avg = (starts + ends + 1) / 2.0  # 1-based mean of [start+1, end]
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.repeat(avg, ends - starts)
  return ranks


def spearman(x, y) -> float:
  return pearson(rank(x), rank(y))


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy, "f1": f1, "matthews_corr": matthews_corr,
    "pearson": pearson, "spearman": spearman}


def predictions_from_logits(spec: TaskSpec, logits: np.ndarray) -> np.ndarray:
  """logits [N, num_labels] -> class ids [N] (scores [N] for regression)."""
  logits = np.asarray(logits)
  return logits[:, 0] if spec.is_regression else np.argmax(logits, -1).astype(np.int32)


def compute_metrics(spec: TaskSpec, labels, predictions) -> dict[str, float]:
  """The task's metrics and `score`, their mean (GLUE's per-task number)."""
  out = {m: METRICS[m](labels, predictions) for m in spec.metrics}
  out["score"] = float(np.mean([out[m] for m in spec.metrics]))
  return out
