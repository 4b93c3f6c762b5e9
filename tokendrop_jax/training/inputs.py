"""A run's inputs: the corpus, the tokenizer and the ArrayRecord dataset.

Best prepared once before a launch (`python -m tokendrop_jax.prepare`): a run
whose `data.dataset_dir` is a prepared dataset (it holds corpus_meta.json,
written last) reads it and its tokenizer and builds nothing. Otherwise
everything is built into the workdir (or under `data.dataset_dir`) and reused
on restart. On a pod only process 0 builds; the others wait for it and read
what it built, and if their disk does not hold it (per-host disks) they stop
with what to do instead of building a dataset of their own.

The functions here take the config's typed `input_settings` (the corpus, the
tokenizer, the batches), built once by the mains, never the config itself.
"""
from __future__ import annotations

import json
import logging

import jax
import numpy as np
from jax.experimental import multihost_utils

from tokendrop_jax import config_fields, files
from tokendrop_jax.data import demo_corpus, pipeline, text_builder, text_readers, text_sources
from tokendrop_jax.data import tokenizer as tokenizer_lib
from tokendrop_jax.data import wordpiece
from tokendrop_jax.data.shards import ShardedIterator
from tokendrop_jax.training import host_rows
from tokendrop_jax.training import workdir as workdir_lib
from tokendrop_jax.training.input_settings import Batches, Corpus, InputSettings, TokenizerSpec

TOKENIZER_TRAINING_SENTENCES = 2_000_000
_MAX_SHARED_BYTES = 8192  # the JSON of the paths process 0 hands to the others


# ------------------------------------------------------------------ corpus ---
def _demo_files(corpus_dir: str) -> tuple[str, str]:
  """The built-in corpus, written once (rewriting would change its fingerprint)."""
  train, valid = files.join(corpus_dir, "train.txt"), files.join(corpus_dir, "valid.txt")
  if not (workdir_lib.exists(train) and workdir_lib.exists(valid)):
    train, valid = demo_corpus.write_demo_corpus(corpus_dir)
  return train, valid


def _sample_file(source, corpus_dir: str) -> str:
  """The first sentences of `source`'s train split as a text file, to train the tokenizer on."""
  path = files.join(corpus_dir, "tokenizer_sample.txt")
  if workdir_lib.exists(path):
    return path
  files.makedirs(corpus_dir)
  n, tmp = 0, path + ".tmp"
  with files.open(tmp, "w") as f:
    for doc in source.documents(text_sources.TRAIN):
      f.write("\n".join(doc) + "\n\n")
      n += len(doc)
      if n >= TOKENIZER_TRAINING_SENTENCES:
        break
  files.replace(tmp, path)
  return path


def tokenizer_files(source, corpus_dir: str) -> list[str]:
  """Text files to train the tokenizer on: plain-text train files as they are; for any
  other source (JSON lines, Parquet, TFDS, a mixture, a carved split) a file of its
  train split's first TOKENIZER_TRAINING_SENTENCES sentences, written into `corpus_dir`."""
  if isinstance(source, text_sources.TextFiles) and all(
      text_readers.file_format(p) == "text" for p in source.train):
    return list(source.train)
  return [_sample_file(source, corpus_dir)]


def tfds_source(corpus: Corpus) -> text_sources.TfdsText:
  return text_sources.TfdsText(corpus.tfds_name, corpus.tfds_text_field, corpus.tfds_train_split,
                               corpus.tfds_valid_split, corpus.tfds_data_dir or None)


def check_tfds_splits(corpus: Corpus, name: str | None = None, where: str = "") -> None:
  """Fails, naming the field and listing the dataset's splits, on a TFDS split that the
  dataset lacks (slices such as 'train[:99%]' count as their split).

  `name`: a TFDS member of a `data.sources` mixture (`where` names it); only its
  train split is read. Default: `data.tfds_name`, both splits unless carved.
  """
  import tensorflow_datasets as tfds
  field = where or "data.tfds_name"
  name = name or corpus.tfds_name
  try:
    builder = tfds.builder(name, data_dir=corpus.tfds_data_dir or None)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{field}={name!r}: {str(e).splitlines()[0]}") from None
  splits = builder.info.splits
  if not list(splits):
    raise ValueError(f"{field}={name!r} is not prepared in {builder.data_dir} "
                     "(no splits there): prepare it with file_format='array_record', and set "
                     "data.tfds_data_dir to where it is")
  fields = [("data.tfds_train_split", corpus.tfds_train_split)]
  if not corpus.valid_fraction and not where:
    fields.append(("data.tfds_valid_split", corpus.tfds_valid_split))
  for field, split in fields:
    try:
      splits[split]  # pylint: disable=pointless-statement
    except (KeyError, ValueError) as e:
      hint = ("; or set data.valid_fraction (e.g. 0.01) to carve a validation split from the "
              "train split" if field == "data.tfds_valid_split" else "")
      raise ValueError(f"{field}={split!r}: {e}; the splits of TFDS dataset "
                       f"{name!r}: {list(splits)}{hint}") from None


def text_files(corpus: Corpus, corpus_dir: str) -> tuple[list[str], list[str]] | None:
  """(train files, validation files) of the corpus the config names; None for TFDS or a
  mixture (`data.sources`). No validation files when `data.valid_fraction` > 0.

  A config names one corpus (`config_checks.validate` refuses two): `data.tfds_name`,
  `data.demo_corpus` (written into `corpus_dir`), `data.sources` or
  `data.train_files`/`data.valid_files`.
  """
  if corpus.tfds_name:
    return None
  if corpus.demo_corpus:
    train, valid = _demo_files(corpus_dir)
    return [train], [] if corpus.valid_fraction else [valid]
  if corpus.sources:
    return None
  if not corpus.train_files:
    raise ValueError("no corpus: set data.train_files/data.valid_files, data.sources, "
                     "data.tfds_name, or data.demo_corpus=True, or point data.dataset_dir at "
                     "a directory prepared by `python -m tokendrop_jax.prepare`")
  need_validation(corpus, "data.train_files")
  valid = corpus.valid_files.split(",") if corpus.valid_files else []
  sources = corpus.train_files.split(","), valid
  for field, patterns in zip(("data.train_files", "data.valid_files"), sources):
    if patterns:
      files.expand(patterns, field)  # a missing file, named by its field
  return sources


def need_validation(corpus: Corpus, field: str) -> None:
  if not corpus.valid_files and not corpus.valid_fraction:
    raise ValueError(f"data.valid_files must be set when {field} is (or data.valid_fraction "
                     "> 0, to carve the validation documents from the train documents)")


def _checked_files(patterns, field: str, text_field: str) -> tuple[str, ...]:
  """The files `patterns` match; .jsonl/.parquet ones checked for `text_field`."""
  paths = files.expand(patterns, field)
  for path in paths:
    try:
      text_readers.check_file(path, text_field)
    except KeyError as e:
      raise ValueError(f"data.text_field={text_field!r}: {e.args[0]}") from None
    except ValueError as e:
      raise ValueError(f"{field}: {e}") from None
  return tuple(paths)


def _mixture(corpus: Corpus, carve: bool) -> text_sources.Mixture:
  parts, weights = [], []
  for pattern, weight in config_fields.mixture_sources(corpus.sources):
    name = config_fields.tfds_member(pattern)
    if name:  # its data.tfds_train_split, field data.tfds_text_field, in data.tfds_data_dir
      check_tfds_splits(corpus, name, f"data.sources ({pattern})")
      part = text_sources.TfdsText(name, corpus.tfds_text_field, corpus.tfds_train_split,
                                   corpus.tfds_valid_split, corpus.tfds_data_dir or None)
    else:
      paths = _checked_files([pattern], f"data.sources ({pattern})", corpus.text_field)
      part = text_sources.TextFiles(paths, (), corpus.text_field)
    if next(part.documents(text_sources.TRAIN), None) is None:
      raise ValueError(f"data.sources: {pattern!r} holds no document")
    parts.append(part)
    weights.append(weight)
  valid = None
  if not carve:
    need_validation(corpus, "data.sources")
    valid = text_sources.TextFiles(
        (), _checked_files(corpus.valid_files.split(","), "data.valid_files", corpus.text_field),
        corpus.text_field)
  return text_sources.Mixture(tuple(parts), tuple(weights), valid)


def corpus_source(corpus: Corpus, corpus_dir: str):
  """The `text_sources` source of the corpus the config names (see `text_files`).

  Checked before any long work, each error naming its config field: the files
  exist, .jsonl/.parquet files have `data.text_field`, the TFDS splits exist, each
  source of a mixture holds a document. `data.valid_fraction` > 0 carves the
  validation split from the train documents (`text_sources.Carved`).
  """
  carve = corpus.valid_fraction > 0
  found = text_files(corpus, corpus_dir)
  if corpus.tfds_name:
    check_tfds_splits(corpus)
    source = tfds_source(corpus)
  elif found is None:
    source = _mixture(corpus, carve)
  else:
    train = _checked_files(found[0], "data.train_files", corpus.text_field)
    valid = () if carve else _checked_files(found[1], "data.valid_files", corpus.text_field)
    source = text_sources.TextFiles(train, valid, corpus.text_field)
  return text_sources.Carved(source, corpus.valid_fraction) if carve else source


def given_tokenizer(spec: TokenizerSpec):
  """`data.tokenizer_model` loaded (with `data.lowercase`); errors name the field."""
  if not files.exists(spec.tokenizer_model):
    raise FileNotFoundError(f"data.tokenizer_model: no such file {spec.tokenizer_model}")
  try:
    return tokenizer_lib.load_tokenizer(spec.tokenizer_model, spec.lowercase_option)
  except ValueError as e:
    raise ValueError(f"data.tokenizer_model: {e}") from None


def ensure_tokenizer(spec: TokenizerSpec, tok_dir: str, source, corpus_dir: str):
  """The tokenizer in `tok_dir` (tokenizer.model or tokenizer.json): a copy of
  `data.tokenizer_model` (a vocab.txt saved as tokenizer.json), or one of
  `data.tokenizer_type` trained on the corpus `source` (`tokenizer_files`); kept if
  already there. Its size must be `model.vocab_size`."""
  vocab_size = spec.vocab_size
  existing = workdir_lib.find_tokenizer(tok_dir)
  if spec.tokenizer_model:
    given = given_tokenizer(spec)
    if existing is None:
      workdir_lib.atomic_write(workdir_lib.tokenizer_target(tok_dir, given), given.serialized())
  elif existing is None:
    sample = tokenizer_files(source, corpus_dir)
    logging.info("Training a %d-piece %s tokenizer on %s", vocab_size, spec.tokenizer_type,
                 sample)
    if spec.tokenizer_type == "wordpiece":
      lowercase = spec.lowercase_option
      wordpiece.train_wordpiece(
          sample, vocab_size, workdir_lib.path(tok_dir, workdir_lib.TOKENIZER_JSON),
          lowercase=True if lowercase is None else lowercase)
    else:
      tokenizer_lib.train_tokenizer(
          sample, vocab_size, workdir_lib.path(tok_dir, workdir_lib.TOKENIZER_FILE)[:-len(".model")],
          model_type=spec.tokenizer_type)
  tok_path = workdir_lib.tokenizer_path(tok_dir)
  tok = tokenizer_lib.load_tokenizer(tok_path)
  if tok.vocab_size != vocab_size:
    raise ValueError(f"model.vocab_size={vocab_size} but the tokenizer {tok_path} has "
                     f"{tok.vocab_size} pieces")
  return tok


def build_dataset(source, tok, data_dir: str, **options) -> str:
  """The ArrayRecord dataset of the corpus `source` under `data_dir` -> its directory.

  `options` go to `text_builder.build_from_source` (name, workers, progress, extra_meta).
  """
  return text_builder.build_from_source(source, tok, data_dir, **options)


def _build(settings: InputSettings, workdir: str) -> tuple[str, str]:
  corpus_dir = workdir_lib.path(workdir, workdir_lib.CORPUS_DIR)
  source = corpus_source(settings.corpus, corpus_dir)
  tok = ensure_tokenizer(settings.tokenizer, workdir, source, corpus_dir)
  data_dir = settings.dataset_dir or workdir_lib.path(workdir, workdir_lib.DATA_DIR)
  return build_dataset(source, tok, data_dir), workdir_lib.tokenizer_path(workdir)


# ---------------------------------------------------------------- prepared ---
def is_prepared(dataset_dir: str) -> bool:
  """Whether `dataset_dir` is a finished dataset (its corpus_meta.json is written last)."""
  return bool(dataset_dir) and workdir_lib.exists(dataset_dir, text_builder.META_FILE)


def _same_file(a: str, b: str) -> bool:
  return files.read_bytes(a) == files.read_bytes(b)


def _same_tokenizer(given, saved_path: str) -> bool:
  """Whether the loaded `given` is the tokenizer saved at `saved_path` (a vocab.txt
  counts as its tokenizer.json)."""
  return (files.basename(saved_path) == given.file_name
          and given.serialized() == files.read_bytes(saved_path))


def use_prepared(settings: InputSettings, workdir: str) -> tuple[str, str]:
  """Checks the prepared `data.dataset_dir` against the config and the workdir and
  copies its tokenizer into the workdir -> (dataset_dir, its tokenizer)."""
  spec, vocab_size = settings.tokenizer, settings.tokenizer.vocab_size
  dataset_dir = workdir_lib.resolve(settings.dataset_dir)
  tok_path = workdir_lib.find_tokenizer(dataset_dir)
  if tok_path is None:
    raise FileNotFoundError(f"data.dataset_dir={dataset_dir} has no {workdir_lib.TOKENIZER_FILE} "
                            f"(or {workdir_lib.TOKENIZER_JSON}): not a directory prepared by "
                            "`python -m tokendrop_jax.prepare`")
  if spec.tokenizer_model and not _same_tokenizer(given_tokenizer(spec), tok_path):
    raise ValueError(f"data.tokenizer_model={spec.tokenizer_model} is not the tokenizer of the "
                     f"prepared data.dataset_dir ({tok_path}); the dataset was tokenized with "
                     "the latter: unset data.tokenizer_model, or prepare a dataset with it")
  tok = tokenizer_lib.load_tokenizer(tok_path)
  if tok.vocab_size != vocab_size:
    raise ValueError(f"model.vocab_size={vocab_size} but the tokenizer of the prepared "
                     f"data.dataset_dir, {tok_path}, has {tok.vocab_size} pieces")
  in_workdir = workdir_lib.find_tokenizer(workdir)
  if in_workdir is None:
    workdir_lib.atomic_copy(tok_path, workdir_lib.tokenizer_target(workdir, tok))
  elif files.basename(in_workdir) != files.basename(tok_path) or not _same_file(in_workdir,
                                                                                tok_path):
    raise ValueError(f"{in_workdir} is not the tokenizer of data.dataset_dir ({tok_path}): the "
                     f"run in {workdir} was started with another tokenizer; use another "
                     "--workdir or the dataset it was started with")
  logging.info("Using the prepared dataset %s (nothing to build)", dataset_dir)
  return dataset_dir, tok_path


# -------------------------------------------------------------- processes ---
def _share(payload: dict | None) -> dict:
  """Process 0's `payload` (small JSON), on every process; waits for process 0."""
  buf = np.zeros((_MAX_SHARED_BYTES,), np.int32)
  if payload is not None:
    raw = json.dumps(payload).encode("utf-8")  # never holds a NUL byte
    if len(raw) > _MAX_SHARED_BYTES:
      raise ValueError(f"too long to share between processes: {payload}")
    buf[:len(raw)] = np.frombuffer(raw, np.uint8)
  buf = np.asarray(multihost_utils.broadcast_one_to_all(buf, is_source=payload is not None))
  return json.loads(bytes(buf[buf > 0].astype(np.uint8)).decode("utf-8"))


def inputs_here(found: tuple[str, str], process_index: int, process_count: int,
                exists=workdir_lib.exists) -> tuple[str, str]:
  """(dataset_dir, tokenizer path) as this process reads what process 0 found or built.

  Process 0 reads its own. Another reads the dataset's copy of the tokenizer, and
  fails, saying what to do, if it cannot see the dataset (hosts with their own
  disks): it never builds one itself.
  """
  dataset_dir, tok_path = found
  if process_index == 0:
    return dataset_dir, tok_path
  if not exists(dataset_dir, text_builder.META_FILE):
    raise FileNotFoundError(
        f"process {process_index} of {process_count} cannot read the dataset process 0 uses, "
        f"{dataset_dir} (no {text_builder.META_FILE} there): the hosts do not share that disk. "
        "Prepare the inputs once, before the launch, where every host can read them: "
        "`python -m tokendrop_jax.prepare --config=<the same config> --output=<a shared path>` "
        "(or copy the prepared directory to the same path on every host), then launch with "
        "--config.data.dataset_dir=<that path>")
  # The dataset's copy of process 0's tokenizer: the same name (tokenizer.model or .json).
  return dataset_dir, workdir_lib.path(dataset_dir, files.basename(tok_path))


def _find_or_build(settings: InputSettings, workdir: str) -> tuple[str, str]:
  if is_prepared(settings.dataset_dir):
    return use_prepared(settings, workdir)
  return _build(settings, workdir)


def prepare(settings: InputSettings, workdir: str) -> tuple[str, tokenizer_lib.Tokenizer |
                                           wordpiece.WordPieceTokenizer]:
  """Finds (prepared) or builds the tokenizer and dataset -> (local dataset_dir, tokenizer).

  On a pod, process 0 does it and hands the paths, or its error, to the others,
  so that a bad input stops every process instead of leaving them waiting.
  """
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  index, count = jax.process_index(), jax.process_count()
  payload = None
  if index == 0:
    try:
      payload = {"found": list(_find_or_build(settings, workdir))}
    except Exception as e:  # pylint: disable=broad-except
      if count > 1:
        _share({"error": f"{type(e).__name__}: {e}"[:2000]})
      raise
  if count > 1:
    payload = _share(payload)  # the only collective here: process 0 joins it either way
  if "error" in payload:
    raise ValueError(f"process 0 could not prepare the inputs: {payload['error']}")
  dataset_dir, tok_path = inputs_here(tuple(payload["found"]), index, count)
  # A bucket's dataset is read from a copy on this host's disk (ArrayRecord reads local files).
  return text_builder.local_dataset(dataset_dir), tokenizer_lib.load_tokenizer(tok_path)


def _shard_options(data: Batches, plan: host_rows.ShardPlan, shard: int) -> dict:
  """What the train and eval pipelines of virtual shard `shard` share."""
  return dict(seq_len=data.seq_len, max_predictions_per_seq=data.max_predictions_per_seq,
              global_batch_size=data.global_batch_size, mask_prob=data.mask_prob,
              seed=data.seed, shard_index=shard, num_shards=plan.num_shards,
              read_threads=max(1, 4 // len(plan.shards)),  # one process reads all on one host
              masking=data.masking, max_ngram=data.max_ngram)


def train_iterator(data: Batches, dataset_dir: str, plan: host_rows.ShardPlan) -> ShardedIterator:
  """The training batches of this process's virtual shards (`plan.shards`)."""
  return ShardedIterator({v: pipeline.make_pretrain_iterator(
      dataset_dir, split=text_sources.TRAIN, worker_count=data.worker_count,
      **_shard_options(data, plan, v)) for v in plan.shards}, plan.num_shards, plan.owned)


def eval_iterator(data: Batches, dataset_dir: str, plan: host_rows.ShardPlan) -> ShardedIterator:
  """`train.eval_batches` fixed validation batches of this process's virtual shards."""
  return ShardedIterator({v: pipeline.make_eval_iterator(
      dataset_dir, split=text_sources.VALIDATION, num_batches=data.eval_batches,
      **_shard_options(data, plan, v)) for v in plan.shards}, plan.num_shards, plan.owned)
