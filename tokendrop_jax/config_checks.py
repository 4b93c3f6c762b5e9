"""Validation of a whole config, before any input is prepared or anything compiles.

Each check raises ValueError naming the offending field. Unknown fields are
refused, and the flat field names `configs/glue.py` had before the shared
schema (`GLUE_RENAMED`) are refused with their new name.
"""
from __future__ import annotations

import ml_collections

from tokendrop_jax import config_fields, config_lib, importance, partitioning
from tokendrop_jax.data import glue, masking
from tokendrop_jax.model.config import BertConfig

# token_drop.consistency_form: what ScTD compares (config_lib.base_config says how).
CONSISTENCY_FORMS = ("head", "paper")

# configs/glue.py's flat fields before the shared schema -> where they live now.
GLUE_RENAMED = {
    "tokenizer_model": "data.tokenizer_model", "train_file": "data.train_file",
    "eval_file": "data.eval_file", "eval_mismatched_file": "data.eval_mismatched_file",
    "predict_file": "data.predict_file", "tfds_data_dir": "data.tfds_data_dir",
    "max_seq_len": "data.seq_len", "batch_size": "data.global_batch_size",
    "eval_batch_size": "data.eval_batch_size", "learning_rate": "optim.learning_rate",
    "warmup_fraction": "optim.warmup_fraction", "weight_decay": "optim.weight_decay",
    "grad_clip_norm": "optim.grad_clip_norm", "adam_b1": "optim.b1", "adam_b2": "optim.b2",
    "adam_eps": "optim.eps", "dropout_rate": "model.dropout_rate",
    "attention_dropout_rate": "model.attention_dropout_rate", "dtype": "model.dtype",
    "seed": "train.seed (init, dropout) and data.seed (shuffles)",
    "num_epochs": "train.num_epochs", "log_every": "train.log_every",
    "checkpoint_every": "train.checkpoint_every", "keep_checkpoints": "train.keep_checkpoints",
    "async_checkpoint": "train.async_checkpoint",
}


def _unknown_fields(config, schema, prefix="") -> None:
  for key in config.keys():
    name = f"{prefix}{key}"
    if key not in schema:
      if not prefix and config_lib.is_glue(schema) and key in GLUE_RENAMED:
        raise ValueError(f"config.{key} was renamed: set {GLUE_RENAMED[key]} instead "
                         "(configs/glue.py now has the pretraining configs' sections)")
      raise ValueError(f"unknown config field {name}; known in {prefix or 'config.'}: "
                       f"{', '.join(sorted(schema.keys()))}")
    if isinstance(schema[key], ml_collections.ConfigDict) and key != "model":
      _unknown_fields(config[key], schema[key], name + ".")  # model: BertConfig names it


def _positive(section, names, prefix):
  for name in names:
    value = section[name]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
      raise ValueError(f"{prefix}.{name} must be positive, got {value!r}")


def _validate_shared(config) -> BertConfig:
  """The sections both jobs have: model, optim, train, mesh."""
  cfg = config_lib.model_config(config)
  cfg.validate()
  optim, train = config.optim, config.train
  _positive(optim, ("learning_rate", "grad_accum_steps"), "optim")
  _positive(train, ("log_every", "checkpoint_every", "keep_checkpoints"), "train")
  if optim.warmup_steps < 0 or optim.weight_decay < 0:
    raise ValueError("optim.warmup_steps and optim.weight_decay must be >= 0")
  if not 0.0 <= optim.warmup_fraction < 1.0:
    raise ValueError(f"optim.warmup_fraction must be in [0, 1), got {optim.warmup_fraction}")
  if optim.warmup_fraction > 0 and optim.warmup_steps > 0:
    raise ValueError(f"set optim.warmup_steps ({optim.warmup_steps}) or optim.warmup_fraction "
                     f"({optim.warmup_fraction}), not both")
  if train.nan_policy not in ("stop", "skip"):
    raise ValueError(f"train.nan_policy must be 'stop' or 'skip', got {train.nan_policy!r}")
  if train.prng_impl not in config_lib.PRNG_IMPLS:
    raise ValueError(f"train.prng_impl must be one of {tuple(config_lib.PRNG_IMPLS)}, got "
                     f"{train.prng_impl!r}")
  for axis in partitioning.MESH_AXES:
    size = config.mesh[axis]
    if not isinstance(size, int) or size == 0 or size < -1:
      raise ValueError(f"mesh.{axis} must be a positive int or -1 (fill), got {size!r}")
  partitioning.rules_from_config(config.mesh.rules)
  if config.mesh.get("device_order", "topology") not in ("topology", "list"):
    raise ValueError(f"mesh.device_order must be 'topology' or 'list', got "
                     f"{config.mesh.device_order!r}")
  return cfg


def check_platform(config, platform: str | None = None) -> None:
  """What `platform` (default: this machine's backend) must have for `config`
  (model.attention's kernel), checked before any input is prepared or anything
  compiles; errors name the field."""
  import jax  # pylint: disable=g-import-not-at-top
  from tokendrop_jax.model import attention  # pylint: disable=g-import-not-at-top
  cfg = config_lib.model_config(config)
  attention.check(cfg.attention, platform or jax.default_backend(), cfg.dtype,
                  cfg.attention_dropout_rate)


def validate(config: ml_collections.ConfigDict) -> None:
  """Fail fast, naming the field, on anything that would break later."""
  if config_lib.is_glue(config):
    validate_glue(config)
    return
  _unknown_fields(config, config_lib.base_config())
  cfg = _validate_shared(config)
  td, data, optim, train = config.token_drop, config.data, config.optim, config.train
  strategy = importance.get(td.strategy)
  _positive(data, ("seq_len", "max_predictions_per_seq", "global_batch_size", "num_shards"),
            "data")
  _positive(train, ("num_steps", "eval_every", "eval_batches"), "train")
  config_fields.check_tokenizer_fields(data)
  if data.global_batch_size % data.num_shards:
    raise ValueError(f"data.global_batch_size={data.global_batch_size} must divide into "
                     f"data.num_shards={data.num_shards} virtual input shards")
  if data.seq_len < 8:
    raise ValueError(f"data.seq_len must be at least 8, got {data.seq_len}")
  if data.seq_len > cfg.max_position:
    raise ValueError(f"data.seq_len ({data.seq_len}) exceeds model.max_position ({cfg.max_position})")
  if data.max_predictions_per_seq > data.seq_len:
    raise ValueError(f"data.max_predictions_per_seq ({data.max_predictions_per_seq}) exceeds "
                     f"data.seq_len ({data.seq_len})")
  if not 0.0 < data.mask_prob < 1.0:
    raise ValueError(f"data.mask_prob must be in (0, 1), got {data.mask_prob}")
  masking.check_masking(data.masking, data.max_ngram, where="data")
  if not 0.0 <= data.valid_fraction < 1.0:
    raise ValueError(f"data.valid_fraction must be in [0, 1), got {data.valid_fraction}")
  if data.valid_fraction > 0 and data.valid_files:
    raise ValueError("set data.valid_files or data.valid_fraction (validation carved from the "
                     "train documents), not both")
  if data.sources:
    config_fields.mixture_sources(data.sources)
  # One corpus: the readers would otherwise pick one and silently ignore the others.
  corpora = [name for name in ("sources", "train_files", "tfds_name", "demo_corpus") if data[name]]
  if len(corpora) > 1:
    hint = (" (configs/tiny.py and configs/demo.py set data.demo_corpus=True: add "
            "--config.data.demo_corpus=False)" if "demo_corpus" in corpora else "")
    what = " (a mixture)" if corpora[0] == "sources" else ""
    raise ValueError(f"set data.{corpora[0]}{what} or data.{corpora[1]}, not both{hint}")
  if data.global_batch_size % optim.grad_accum_steps:
    raise ValueError(f"optim.grad_accum_steps ({optim.grad_accum_steps}) must divide "
                     f"data.global_batch_size ({data.global_batch_size})")
  if not 0.0 < td.ema_beta < 1.0:
    raise ValueError(f"token_drop.ema_beta must be in (0, 1), got {td.ema_beta}")
  if strategy.drops:
    if not isinstance(td.keep_tokens, int) or not 1 <= td.keep_tokens <= data.seq_len:
      raise ValueError(f"token_drop.keep_tokens must be in [1, data.seq_len={data.seq_len}], "
                       f"got {td.keep_tokens!r}")
    if cfg.num_layers < 4:
      raise ValueError(f"model.num_layers must be >= 4 to split for token dropping, "
                       f"got {cfg.num_layers}")
  for name in ("full_start_fraction", "full_end_fraction"):
    if not 0.0 <= td[name] <= 1.0:
      raise ValueError(f"token_drop.{name} must be in [0, 1], got {td[name]}")
  if td.full_start_fraction + td.full_end_fraction > 1.0:
    raise ValueError("token_drop.full_start_fraction + token_drop.full_end_fraction exceed 1")
  if td.consistency_weight < 0:
    raise ValueError(f"token_drop.consistency_weight must be >= 0, got {td.consistency_weight}")
  if not isinstance(td.consistency_every, int) or td.consistency_every < 1:
    raise ValueError(f"token_drop.consistency_every must be a positive int, got "
                     f"{td.consistency_every!r}")
  if td.consistency_form not in CONSISTENCY_FORMS:
    raise ValueError(f"token_drop.consistency_form must be one of {CONSISTENCY_FORMS}, got "
                     f"{td.consistency_form!r}")
  if not isinstance(td.keep_schedule_stages, int) or td.keep_schedule_stages < 0:
    raise ValueError(f"token_drop.keep_schedule_stages must be an int >= 0, got "
                     f"{td.keep_schedule_stages!r}")
  if not 0.0 < td.keep_schedule_fraction <= 1.0:
    raise ValueError(f"token_drop.keep_schedule_fraction must be in (0, 1], got "
                     f"{td.keep_schedule_fraction}")
  if td.layerwise and not strategy.per_draw:
    raise ValueError(f"token_drop.layerwise needs a strategy that draws fresh scores, such as "
                     f"'random' (an importance strategy would pick the same tokens in every "
                     f"layer), got {td.strategy!r}")
  if not strategy.drops and (td.consistency_weight > 0 or td.keep_schedule_stages > 1):
    raise ValueError(f"token_drop.consistency_weight / keep_schedule_stages need a dropping "
                     f"strategy, but token_drop.strategy is {td.strategy!r}")


def validate_glue(config: ml_collections.ConfigDict) -> None:
  """Fine-tuning fields that need no files (task, sizes, optimizer, files' roles)."""
  spec = glue.get_task(config.task)
  _unknown_fields(config, config_lib.glue_config(spec.name))
  if config.init_from is None:
    raise ValueError("init_from is required: --config.init_from=PRETRAIN_WORKDIR (or "
                     "--config.init_from='' for a randomly initialised encoder)")
  if config.init_from:
    default = config_lib.model_section()
    changed = [k for k, v in config.model.items()
               if k not in config_lib.FINETUNE_MODEL_FIELDS and default.get(k) != v]
    if changed:
      raise ValueError(
          f"config.model.{changed[0]} is set, but the model's sizes come from "
          f"{config.init_from}/config.json; model.* sizes only apply with "
          f"--config.init_from='' (random init); fine-tuning sets only model."
          f"{{{','.join(config_lib.FINETUNE_MODEL_FIELDS)}}}")
  _validate_shared(config)
  data, train = config.data, config.train
  _positive(data, ("seq_len", "global_batch_size"), "data")
  _positive(train, ("num_epochs",), "train")
  if config.optim.grad_accum_steps != 1:
    raise ValueError(f"optim.grad_accum_steps={config.optim.grad_accum_steps}: fine-tuning "
                     "does not accumulate gradients; use 1 and a smaller data.global_batch_size")
  config_fields.check_tokenizer_fields(data)
  if not isinstance(data.eval_batch_size, int) or data.eval_batch_size < 0:
    raise ValueError(f"data.eval_batch_size must be an int >= 0, got {data.eval_batch_size!r}")
  if data.eval_mismatched_file and spec.name != "mnli":
    raise ValueError(f"data.eval_mismatched_file is for mnli only, not {spec.name}")
  if data.eval_mismatched_file and not data.eval_file:
    raise ValueError("data.eval_mismatched_file needs data.eval_file (dev_matched.tsv)")
