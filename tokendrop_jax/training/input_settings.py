"""What a pretraining run's inputs read of the config, typed and built once at the top
(`InputSettings.of(config)`): the corpus, the tokenizer and the batches. The input code
(`training/inputs.py`, `prepare.py`) takes these, never the whole config; the fields keep
their config names, so an error still names the field a user sets (`data.<name>`).
"""
from __future__ import annotations

import dataclasses

from tokendrop_jax import config_fields


def _pick(cls, section, **extra):
  """`cls` from the fields of the config section that share its field names."""
  names = [f.name for f in dataclasses.fields(cls) if f.name not in extra]
  return cls(**{n: section[n] for n in names}, **extra)


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Which text the dataset is made of: one of `tfds_name`, `demo_corpus`, `sources`, or
  `train_files`/`valid_files` (comma-separated globs); `valid_fraction` > 0 carves the
  validation documents from the train documents."""
  tfds_name: str
  tfds_text_field: str
  tfds_train_split: str
  tfds_valid_split: str
  tfds_data_dir: str
  demo_corpus: bool
  sources: str
  train_files: str
  valid_files: str
  valid_fraction: float
  text_field: str

  @classmethod
  def of(cls, data) -> "Corpus":
    return _pick(cls, data)


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
  """The tokenizer: `tokenizer_model` as given, else one of `tokenizer_type` trained on
  the corpus; `lowercase` is the field as set (True, False, 'auto' or None)."""
  tokenizer_model: str
  tokenizer_type: str
  lowercase: bool | str | None
  vocab_size: int  # model.vocab_size: the tokenizer must have this many pieces

  @property
  def lowercase_option(self) -> bool | None:
    """The tokenizer's argument: a bool, or None (infer from the vocabulary)."""
    return config_fields.lowercase_option(self.lowercase)

  @classmethod
  def of(cls, config) -> "TokenizerSpec":
    return _pick(cls, config.data, lowercase=config.data.get("lowercase"),
                 vocab_size=config.model.vocab_size)


@dataclasses.dataclass(frozen=True)
class Batches:
  """How documents become packed, masked batches (`data.pipeline`)."""
  seq_len: int
  max_predictions_per_seq: int
  global_batch_size: int
  mask_prob: float
  masking: str
  max_ngram: int
  seed: int
  worker_count: int
  eval_batches: int  # train.eval_batches: the fixed validation batches of an eval

  @classmethod
  def of(cls, config) -> "Batches":
    return _pick(cls, config.data, eval_batches=config.train.eval_batches)


@dataclasses.dataclass(frozen=True)
class InputSettings:
  corpus: Corpus
  tokenizer: TokenizerSpec
  batches: Batches
  dataset_dir: str  # a prepared dataset, or where to build one ('': in the workdir)

  @classmethod
  def of(cls, config) -> "InputSettings":
    return cls(Corpus.of(config.data), TokenizerSpec.of(config), Batches.of(config),
               config.data.dataset_dir)
