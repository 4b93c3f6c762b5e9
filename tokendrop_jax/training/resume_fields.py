"""What a run is: the config fields a resume must not change unless asked to.

Pretraining and fine-tuning each have a table: the fields (a section name covers all
its fields), the values older workdirs had for fields added since (their config.json
lacks them), and the fields with several spellings of one value. `workdir.check_resume`
compares a resuming config with the run's own and refuses, naming every field, what
the user did not name with --allow_change.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

from tokendrop_jax import config_fields
from tokendrop_jax.model.config import remat_name


class Table(NamedTuple):
  fields: tuple[str, ...]
  added: Mapping[str, Any]
  canonical: Mapping[str, Callable[[Any], Any]]


_ADDED = {"train.prng_impl": "threefry", "model.hidden_act": "gelu_tanh",  # jax's, BERT's
          # Another kernel would not resume bit for bit; another layout has other params.
          "model.attention": "auto", "model.scan_layers": False,
          "data.lowercase": "auto"}  # before WordPiece
_CANONICAL = {"model.remat": remat_name,  # saved bools: True == "full"
              "data.lowercase": config_fields.lowercase_name}  # None == 'auto'

PRETRAIN = Table(
    fields=("model", "token_drop", "optim",
            # the text, its tokenizer and how it becomes batches
            "data.train_files", "data.valid_files", "data.sources", "data.text_field",
            "data.valid_fraction", "data.tfds_name", "data.tfds_text_field",
            "data.tfds_train_split", "data.tfds_valid_split", "data.demo_corpus",
            # (the tokenizer is compared by its bytes: inputs.prepare refuses another one
            # whatever path data.tokenizer_model gives it)
            "data.lowercase", "data.seq_len",
            "data.max_predictions_per_seq", "data.mask_prob", "data.masking", "data.max_ngram",
            "data.global_batch_size", "data.num_shards", "data.seed",
            "train.seed", "train.prng_impl"),
    added={**_ADDED, "data.num_shards": 1,  # workdirs from before virtual shards read one stream
           "data.masking": "token", "data.max_ngram": 3},  # before masking options
    canonical=_CANONICAL)

FINETUNE = Table(
    fields=("task", "init_from", "init_step", "model", "data.tokenizer_model",
            "data.train_file", "data.seq_len", "data.global_batch_size", "data.seed",
            "optim", "train.num_epochs", "train.seed", "train.prng_impl", "data.lowercase"),
    added=_ADDED, canonical=_CANONICAL)
