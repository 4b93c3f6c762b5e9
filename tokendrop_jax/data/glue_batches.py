"""GLUE examples as fixed-shape arrays, and the batches fine-tuning takes from them.

The data order is a pure function of (seed, epoch, step): each epoch is a
permutation drawn from `default_rng([seed, epoch])`, so the checkpointed step
alone resumes the exact batch sequence (no iterator state to save). The last
batch of an epoch is padded with weight-0 rows to keep shapes static.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from tokendrop_jax.data import glue


@dataclasses.dataclass(frozen=True)
class GlueFiles:
  """Where a task's splits are read (the config's `data` fields of the same names): TSV
  files where given, else the task's TFDS splits (in `tfds_data_dir`); `seq_len` tokens a
  row."""
  train_file: str
  eval_file: str
  eval_mismatched_file: str
  predict_file: str
  tfds_data_dir: str
  seq_len: int

  @classmethod
  def of(cls, data) -> "GlueFiles":
    return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})


@dataclasses.dataclass
class TaskData:
  train: dict[str, np.ndarray]            # input_ids, input_mask, token_type_ids [N, S]; labels [N]
  evals: dict[str, dict[str, np.ndarray]]  # 'dev' (+ 'dev_mismatched') -> arrays
  predict: Optional[dict[str, np.ndarray]]
  predict_index: list[str]
  sources: dict[str, str]                  # split -> file or TFDS name it came from


def load_data(data: GlueFiles, spec: glue.TaskSpec, tokenizer) -> TaskData:
  """Reads and encodes every split a run needs (TSV files, else TFDS)."""
  tfds_dir = data.tfds_data_dir or None

  def read(path, split, require_labels=True):
    if path:
      return glue.read_tsv(path, spec, require_labels=require_labels)
    return glue.read_tfds(spec, split, tfds_dir)

  train = read(data.train_file, "train")
  if train.labels is None:
    raise ValueError(f"{train.source}: training examples have no labels")
  if data.eval_file:
    eval_sources = {"dev": read(data.eval_file, None)}
    if data.eval_mismatched_file:
      eval_sources["dev_mismatched"] = read(data.eval_mismatched_file, None)
  else:
    names = ["dev"] + [f"dev_{s.split('_')[-1]}" for s in spec.eval_splits[1:]]
    eval_sources = {n: read("", s) for n, s in zip(names, spec.eval_splits)}
  for ex in eval_sources.values():
    if ex.labels is None:
      raise ValueError(f"{ex.source}: dev examples have no labels")
  enc = lambda ex: glue.encode(ex, tokenizer, data.seq_len)
  predict, index = None, []
  if data.predict_file:
    ex = read(data.predict_file, None, require_labels=False)
    predict, index = enc(ex), ex.index
  return TaskData(enc(train), {k: enc(v) for k, v in eval_sources.items()}, predict, index,
                  {"train": train.source, **{k: v.source for k, v in eval_sources.items()}})


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """The example order of one epoch: a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def batch_rows(order: np.ndarray, index: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Rows [B] of batch `index` of an epoch and their weights [B] (0 = padding)."""
  rows = order[index * batch_size:(index + 1) * batch_size]
  weights = np.ones(batch_size, np.float32)
  if len(rows) < batch_size:
    weights[len(rows):] = 0.0
    rows = np.concatenate([rows, np.full(batch_size - len(rows), rows[0], rows.dtype)])
  return rows, weights


def global_batch(arrays: dict[str, np.ndarray], rows: np.ndarray, weights: np.ndarray,
                 keys=None) -> dict[str, np.ndarray]:
  """The whole global batch (rows in order) with its weights; each process holds it."""
  out = {k: arrays[k][rows] for k in (keys or arrays)}
  out["weights"] = weights
  return out
