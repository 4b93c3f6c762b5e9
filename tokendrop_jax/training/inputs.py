"""A run's inputs: the corpus, the tokenizer and the ArrayRecord dataset.

Everything is built once into the workdir (or `data.dataset_dir`) and reused on
restart; on a pod, process 0 builds and the others wait at a barrier.
"""
from __future__ import annotations

import logging
import os

import jax
from jax.experimental import multihost_utils

from tokendrop_jax.data import demo_corpus, pipeline, text_builder
from tokendrop_jax.data import tokenizer as tokenizer_lib
from tokendrop_jax.data.shards import ShardedIterator
from tokendrop_jax.training import host_rows
from tokendrop_jax.training import workdir as workdir_lib

TOKENIZER_TRAINING_SENTENCES = 2_000_000


def _demo_files(workdir: str) -> tuple[str, str]:
  """The built-in corpus, written once (rewriting would change its fingerprint)."""
  out_dir = workdir_lib.path(workdir, workdir_lib.CORPUS_DIR)
  train, valid = os.path.join(out_dir, "train.txt"), os.path.join(out_dir, "valid.txt")
  if not (workdir_lib.exists(train) and workdir_lib.exists(valid)):
    train, valid = demo_corpus.write_demo_corpus(out_dir)
  return train, valid


def _tfds_sample_file(data, workdir: str) -> str:
  """Sentences of the TFDS train split as a text file, to train the tokenizer on."""
  path = workdir_lib.path(workdir, workdir_lib.CORPUS_DIR, "tfds_tokenizer_sample.txt")
  if workdir_lib.exists(path):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  source = text_builder.TfdsText(data.tfds_name, data.tfds_text_field, data.tfds_train_split,
                                 data.tfds_valid_split, data.tfds_data_dir or None)
  n, tmp = 0, path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for doc in source.documents(text_builder.TRAIN):
      f.write("\n".join(doc) + "\n\n")
      n += len(doc)
      if n >= TOKENIZER_TRAINING_SENTENCES:
        break
  os.replace(tmp, path)
  return path


def _build(config, workdir: str) -> tuple[str, str]:
  data, vocab_size = config.data, config.model.vocab_size
  if data.demo_corpus:
    train_files, valid_files = _demo_files(workdir)
  elif data.train_files:
    if not data.valid_files:
      raise ValueError("data.valid_files must be set when data.train_files is")
    train_files, valid_files = data.train_files.split(","), data.valid_files.split(",")
    for field, files in (("data.train_files", train_files), ("data.valid_files", valid_files)):
      tokenizer_lib.expand_files(files, field)  # a missing file, named by its field
  elif not data.tfds_name:
    raise ValueError("no corpus: set data.train_files/data.valid_files, data.tfds_name, "
                     "or data.demo_corpus=True")

  tok_path = workdir_lib.path(workdir, workdir_lib.TOKENIZER_FILE)
  if data.tokenizer_model:
    if not os.path.exists(data.tokenizer_model):
      raise FileNotFoundError(f"data.tokenizer_model: no such file {data.tokenizer_model}")
    if not workdir_lib.exists(tok_path):
      workdir_lib.atomic_copy(data.tokenizer_model, tok_path)
  elif not workdir_lib.exists(tok_path):
    files = train_files if not data.tfds_name else [_tfds_sample_file(data, workdir)]
    logging.info("Training a %d-piece %s tokenizer on %s", vocab_size, data.tokenizer_type, files)
    tokenizer_lib.train_tokenizer(files, vocab_size, tok_path[:-len(".model")],
                                  model_type=data.tokenizer_type)
  tok = tokenizer_lib.Tokenizer(tok_path)
  if tok.vocab_size != vocab_size:
    raise ValueError(f"model.vocab_size={vocab_size} but the tokenizer {tok_path} has "
                     f"{tok.vocab_size} pieces")

  data_dir = data.dataset_dir or workdir_lib.path(workdir, workdir_lib.DATA_DIR)
  if data.tfds_name:
    dataset_dir = text_builder.build_corpus_from_tfds(
        data.tfds_name, data.tfds_text_field, tok, data_dir, train_split=data.tfds_train_split,
        valid_split=data.tfds_valid_split, tfds_data_dir=data.tfds_data_dir or None)
  else:
    dataset_dir = text_builder.build_corpus(train_files, valid_files, tok, data_dir)
  return dataset_dir, tok_path


def prepare(config, workdir: str) -> tuple[str, tokenizer_lib.Tokenizer]:
  """Builds (or finds) the tokenizer and dataset -> (dataset_dir, tokenizer)."""
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  result = None
  if jax.process_index() == 0:
    result = _build(config, workdir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("tokendrop_jax:inputs_ready")
    if result is None:
      result = _build(config, workdir)  # finds what process 0 built
  dataset_dir, tok_path = result
  return dataset_dir, tokenizer_lib.Tokenizer(tok_path)


def train_iterator(config, dataset_dir: str, plan: host_rows.ShardPlan) -> ShardedIterator:
  """The training batches of this process's virtual shards (`plan.shards`)."""
  data = config.data
  threads = max(1, 4 // len(plan.shards))  # one process reads all shards on one host
  return ShardedIterator({v: pipeline.make_pretrain_iterator(
      dataset_dir, split=text_builder.TRAIN, seq_len=data.seq_len,
      max_predictions_per_seq=data.max_predictions_per_seq,
      global_batch_size=data.global_batch_size, mask_prob=data.mask_prob, seed=data.seed,
      shard_index=v, num_shards=plan.num_shards, worker_count=data.worker_count,
      read_threads=threads) for v in plan.shards}, plan.num_shards, plan.owned)


def eval_iterator(config, dataset_dir: str, plan: host_rows.ShardPlan) -> ShardedIterator:
  """`train.eval_batches` fixed validation batches of this process's virtual shards."""
  data = config.data
  return ShardedIterator({v: pipeline.make_eval_iterator(
      dataset_dir, split=text_builder.VALIDATION, seq_len=data.seq_len,
      max_predictions_per_seq=data.max_predictions_per_seq,
      global_batch_size=data.global_batch_size, mask_prob=data.mask_prob, seed=data.seed,
      shard_index=v, num_shards=plan.num_shards, num_batches=config.train.eval_batches,
      read_threads=max(1, 4 // len(plan.shards))) for v in plan.shards}, plan.num_shards, plan.owned)
