"""The one config schema (ml_collections) and its validation.

`configs/*.py` start from `base_config()` and change what they need; every
field a user can set is here, with its default. `validate` runs before any
compile and names the offending field.
"""
from __future__ import annotations

import dataclasses

import ml_collections

from tokendrop_jax import importance
from tokendrop_jax.model.bert import BertConfig
from tokendrop_jax.training import sharding

VARIANTS = importance.STRATEGIES  # none | loss_ema | frequency | random
# Options beyond the paper, appended as `strategy+option[+option]` (e.g. `random+layerwise`).
OPTIONS = {
    "sctd": dict(consistency_weight=1.0),           # ScTD [CLS] consistency every 10 steps
    "schedule": dict(keep_schedule_stages=4),       # keep rises in 4 static stages, then full
    "layerwise": dict(layerwise=True),              # random-LTD subsets per middle layer
}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "base"
  c.model = ml_collections.ConfigDict(dataclasses.asdict(BertConfig()))

  c.token_drop = ml_collections.ConfigDict(dict(
      strategy="loss_ema",       # none | loss_ema | frequency | random
      keep_tokens=256,           # static k of the middle layers
      ema_beta=0.995,
      ema_init=10.0,
      # Optional full-sequence steps at the start/end of training (0 = the paper).
      full_start_fraction=0.0,
      full_end_fraction=0.0,
      # Beyond the paper; all off by default. See training/step_plan.py.
      consistency_weight=0.0,    # ScTD: weight of KL(full [CLS] || dropped [CLS]); 0 = off
      consistency_every=10,      # ... added on every n-th drop step
      keep_schedule_stages=0,    # >1: keep rises from keep_tokens toward seq_len in n stages
      keep_schedule_fraction=0.9,  # ... over this fraction of the steps, then full sequences
      layerwise=False,           # random-LTD: an independent random subset per middle layer
  ))

  c.data = ml_collections.ConfigDict(dict(
      # Text: local files/globs (comma-separated), or a TFDS text dataset by name.
      train_files="",
      valid_files="",
      tfds_name="",
      tfds_text_field="text",
      tfds_train_split="train",
      tfds_valid_split="validation",
      tfds_data_dir="",
      demo_corpus=False,         # build the built-in stdlib-docs corpus in the workdir
      tokenizer_model="",        # an existing SentencePiece .model; else trained into the workdir
      tokenizer_type="unigram",
      dataset_dir="",            # where the ArrayRecord dataset goes; default WORKDIR/data
      seq_len=512,
      max_predictions_per_seq=76,
      mask_prob=0.15,
      global_batch_size=512,
      seed=0,
      worker_count=0,            # grain worker processes (part of the iterator state)
  ))

  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-4,
      weight_decay=0.01,
      warmup_steps=10_000,
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      grad_clip_norm=1.0,
      grad_accum_steps=1,
  ))

  c.train = ml_collections.ConfigDict(dict(
      num_steps=1_000_000,
      seed=0,
      log_every=100,
      eval_every=10_000,
      eval_batches=50,
      checkpoint_every=10_000,
      keep_checkpoints=3,
      async_checkpoint=True,
      peak_flops_per_device=0.0,  # 0 = look up the device kind (TPU v4/v5, A100, H100)
      nan_policy="stop",          # stop: end the run at a NaN/Inf loss | skip: drop that update
  ))

  c.mesh = ml_collections.ConfigDict(dict(
      data=-1,                    # -1 = all remaining devices
      fsdp=1,
      tensor=1,
      # Logical axis -> mesh axes. Data parallel by default, FSDP over the embed
      # dimension when fsdp > 1, tensor parallel over mlp/heads/vocab when tensor > 1.
      rules=[list(rule) for rule in sharding.DEFAULT_RULES],
  ))
  return c


def apply_variant(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """`configs/x.py:strategy[+option...]` picks the importance strategy and options."""
  if arg:
    strategy, *options = arg.split("+")
    if strategy not in VARIANTS:
      raise ValueError(f"unknown config variant {strategy!r}; expected one of {VARIANTS}")
    config.token_drop.strategy = strategy
    for option in options:
      if option not in OPTIONS:
        raise ValueError(f"unknown config option {option!r} in {arg!r}; expected one of "
                         f"{tuple(OPTIONS)}")
      config.token_drop.update(OPTIONS[option])
  return config


def model_config(config) -> BertConfig:
  return BertConfig.from_dict(config.model.to_dict())


def _positive(section, names, prefix):
  for name in names:
    value = section[name]
    if not isinstance(value, (int, float)) or value <= 0:
      raise ValueError(f"{prefix}.{name} must be positive, got {value!r}")


def validate(config: ml_collections.ConfigDict) -> None:
  """Fail fast, naming the field, on anything that would break later."""
  cfg = model_config(config)
  cfg.validate()
  td, data, optim, train = config.token_drop, config.data, config.optim, config.train
  importance.validate_strategy(td.strategy)
  _positive(data, ("seq_len", "max_predictions_per_seq", "global_batch_size"), "data")
  _positive(train, ("num_steps", "log_every", "eval_every", "eval_batches", "checkpoint_every",
                    "keep_checkpoints"), "train")
  _positive(optim, ("learning_rate", "grad_accum_steps"), "optim")
  if data.seq_len < 8:
    raise ValueError(f"data.seq_len must be at least 8, got {data.seq_len}")
  if data.seq_len > cfg.max_position:
    raise ValueError(f"data.seq_len ({data.seq_len}) exceeds model.max_position ({cfg.max_position})")
  if data.max_predictions_per_seq > data.seq_len:
    raise ValueError(f"data.max_predictions_per_seq ({data.max_predictions_per_seq}) exceeds "
                     f"data.seq_len ({data.seq_len})")
  if not 0.0 < data.mask_prob < 1.0:
    raise ValueError(f"data.mask_prob must be in (0, 1), got {data.mask_prob}")
  if data.global_batch_size % optim.grad_accum_steps:
    raise ValueError(f"optim.grad_accum_steps ({optim.grad_accum_steps}) must divide "
                     f"data.global_batch_size ({data.global_batch_size})")
  if optim.warmup_steps < 0 or optim.weight_decay < 0:
    raise ValueError("optim.warmup_steps and optim.weight_decay must be >= 0")
  if not 0.0 < td.ema_beta < 1.0:
    raise ValueError(f"token_drop.ema_beta must be in (0, 1), got {td.ema_beta}")
  if td.strategy != "none":
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
  if not isinstance(td.keep_schedule_stages, int) or td.keep_schedule_stages < 0:
    raise ValueError(f"token_drop.keep_schedule_stages must be an int >= 0, got "
                     f"{td.keep_schedule_stages!r}")
  if not 0.0 < td.keep_schedule_fraction <= 1.0:
    raise ValueError(f"token_drop.keep_schedule_fraction must be in (0, 1], got "
                     f"{td.keep_schedule_fraction}")
  if td.layerwise and td.strategy != "random":
    raise ValueError(f"token_drop.layerwise needs strategy 'random' (an importance strategy "
                     f"would pick the same tokens in every layer), got {td.strategy!r}")
  if td.strategy == "none" and (td.consistency_weight > 0 or td.keep_schedule_stages > 1):
    raise ValueError("token_drop.consistency_weight / keep_schedule_stages need a dropping "
                     "strategy, but token_drop.strategy is 'none'")
  if train.nan_policy not in ("stop", "skip"):
    raise ValueError(f"train.nan_policy must be 'stop' or 'skip', got {train.nan_policy!r}")
  for axis in ("data", "fsdp", "tensor"):
    size = config.mesh[axis]
    if not isinstance(size, int) or size == 0 or size < -1:
      raise ValueError(f"mesh.{axis} must be a positive int or -1 (fill), got {size!r}")
