"""The one config schema (ml_collections): every field a user can set, with its default.

Pretraining (`base_config`) and GLUE fine-tuning (`glue_config`) share the
sections `model`, `optim`, `train` and `mesh` (same fields, same meaning);
`token_drop` is pretraining's, and `data` describes each job's input.
`configs/*.py` start from one of the two and change what they need (a variant
`strategy+option` through `apply_variant`). Checking a config is
`config_checks.validate`'s job; fields with a syntax are read by `config_fields`.
"""
from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections import config_dict

from tokendrop_jax import importance, partitioning
from tokendrop_jax.model.config import BertConfig

# Options beyond the paper, appended as `strategy+option[+option]` (e.g. `random+layerwise`).
OPTIONS = {
    "sctd": dict(consistency_weight=1.0, consistency_form="head"),  # our ScTD variant
    "sctd_paper": dict(consistency_weight=0.05, consistency_form="paper"),  # the authors' ScTD
    "schedule": dict(keep_schedule_stages=4),       # keep rises in 4 static stages, then full
    "layerwise": dict(layerwise=True),              # random-LTD subsets per middle layer
}

# train.prng_impl -> jax's name for it. threefry (the default) is jax's and the same
# bits as before the option; rbg/unsafe_rbg give other streams, so other dropout masks
# and random scores. Dropout's threefry bits are fused with their use
# (model/random_bits.py), which made threefry the fastest on CPU
# (benchmarks/results/step_options_cpu.json); on a TPU, rbg is the usual choice.
PRNG_IMPLS = {"threefry": "threefry2x32", "rbg": "rbg", "unsafe_rbg": "unsafe_rbg"}

# Model fields a fine-tuning run sets for itself; the others (sizes) come from
# the pretraining run it starts from.
FINETUNE_MODEL_FIELDS = ("dropout_rate", "attention_dropout_rate", "dtype", "remat", "attention")


# ---------------------------------------------------------------------------
# The sections.


def model_section() -> ml_collections.ConfigDict:
  """BertConfig's fields and defaults, as a config section (also validation's defaults)."""
  c = dataclasses.asdict(BertConfig())
  # A policy name, or a bool as configs set it before the policies (True = "full"):
  # typed `object` so that both assign, in Python and as --config.model.remat=...
  c["remat"] = config_dict.FieldReference(c["remat"], field_type=object)
  return ml_collections.ConfigDict(c)


def _lowercase_field() -> config_dict.FieldReference:
  # WordPiece lower-casing (and BERT's accent stripping): True | False | 'auto' (a
  # vocab.txt: uncased iff it has no upper-case piece; a trained WordPiece: uncased).
  # Typed `object` so that True/False and 'auto' all assign, also from the command line.
  return config_dict.FieldReference("auto", field_type=object)


def _optim_section(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(
      learning_rate=1e-4,
      weight_decay=0.01,         # AdamW; none on LayerNorm scales and biases
      warmup_steps=10_000,
      warmup_fraction=0.0,       # > 0: warm up for this fraction of the steps instead
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      grad_clip_norm=1.0,
      grad_accum_steps=1,
  ))
  c.update(overrides)
  return c


def _train_section(**overrides) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(dict(
      seed=0,                    # params init and dropout
      prng_impl="threefry",      # PRNG of the seed's stream: threefry | rbg | unsafe_rbg
      log_every=100,
      checkpoint_every=10_000,
      keep_checkpoints=3,
      async_checkpoint=True,
      nan_policy="stop",         # stop: end the run at a NaN/Inf loss | skip: drop that update
  ))
  c.update(overrides)
  return c


def _mesh_section() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(
      data=-1,                    # -1 = all remaining devices
      fsdp=1,
      tensor=1,
      # Logical axis -> mesh axes. Data parallel by default, FSDP over the embed
      # dimension when fsdp > 1, tensor parallel over mlp/heads/vocab when tensor > 1.
      rules=[list(rule) for rule in partitioning.DEFAULT_RULES],
      # 'topology': devices placed along the TPU torus / GPU interconnect (jax's mesh_utils;
      # an error where it cannot); 'list': in jax.devices() order, which may put mesh
      # neighbours far apart on the interconnect.
      device_order="topology",
  ))


def base_config() -> ml_collections.ConfigDict:
  """Pretraining: the paper's BERT-base recipe."""
  c = ml_collections.ConfigDict()
  c.name = "base"
  c.model = model_section()
  c.token_drop = ml_collections.ConfigDict(dict(
      strategy="loss_ema",       # importance.names(): none | loss_ema | frequency | random
      keep_tokens=256,           # static k of the middle layers
      ema_beta=0.995,
      ema_init=10.0,
      # Optional full-sequence steps at the start/end of training (0 = the paper).
      full_start_fraction=0.0,
      full_end_fraction=0.0,
      # Beyond the paper; all off by default. See training/step_plan.py.
      consistency_weight=0.0,    # ScTD: weight of KL(full [CLS] || dropped [CLS]); 0 = off
      consistency_every=10,      # ... added on every n-th drop step
      consistency_form="head",   # "head": MLM head at [CLS], last layer, full pass a fixed target;
                                 # "paper": raw [CLS] states of the last two layers, both passes
      random_ties=False,         # break exact score ties at random instead of leftmost-first
      keep_schedule_stages=0,    # >1: keep rises from keep_tokens toward seq_len in n stages
      keep_schedule_fraction=0.9,  # ... over this fraction of the steps, then full sequences
      layerwise=False,           # random-LTD: an independent random subset per middle layer
  ))
  c.data = ml_collections.ConfigDict(dict(
      # Text: files/globs (comma-separated, local or gs://), or a TFDS text dataset by name.
      # A file's format is its name's: .txt[.gz] one sentence per line, a blank line between
      # documents; .jsonl/.json[.gz] a JSON object (a document) per line; .parquet a
      # document per row; the last two hold the text in field `text_field`.
      train_files="",
      valid_files="",
      # Or a weighted mixture in place of train_files: 'PATTERN@WEIGHT,PATTERN@WEIGHT,...',
      # each pattern one source; a weight is its share of the train text (in characters),
      # which is as long as the sources together: above a source's natural share it is
      # repeated, below it partly used (text_sources.Mixture).
      sources="",
      text_field="text",
      # > 0: the validation split is this fraction of the train documents (chosen by a hash
      # of their text: the same on every run, disjoint from train), in place of
      # valid_files or tfds_valid_split.
      valid_fraction=0.0,
      tfds_name="",
      tfds_text_field="text",
      tfds_train_split="train",
      tfds_valid_split="validation",
      tfds_data_dir="",
      demo_corpus=False,         # build the built-in stdlib-docs corpus in the workdir
      # An existing SentencePiece .model, HF tokenizer.json (WordPiece) or BERT vocab.txt;
      # '' = one of data.tokenizer_type ('unigram' | 'bpe' | 'wordpiece') trained into the workdir.
      tokenizer_model="",
      tokenizer_type="unigram",
      lowercase=_lowercase_field(),
      dataset_dir="",            # where the ArrayRecord dataset goes (default WORKDIR/data), or a
                                 # directory made by `python -m tokendrop_jax.prepare`, used as is
      seq_len=512,
      max_predictions_per_seq=76,
      mask_prob=0.15,
      masking="token",           # 'token' | 'whole_word' | 'ngram' (data/masking.py)
      max_ngram=3,               # 'ngram': spans of 1..max_ngram whole words, P(n) ~ 1/n
      global_batch_size=512,
      seed=0,                    # data order and masking
      worker_count=0,            # grain worker processes per input shard (part of its state)
      num_shards=1,              # virtual input shards: the batch does not depend on the
                                 # process count; a multiple of mesh.data*mesh.fsdp reads no row twice
  ))
  c.optim = _optim_section()
  c.train = _train_section(
      num_steps=1_000_000,
      eval_every=10_000,
      eval_batches=50,
      peak_flops_per_device=0.0,  # 0 = look up the device kind (TPU v4/v5, A100, H100)
  )
  c.mesh = _mesh_section()
  return c


def glue_config(task: str) -> ml_collections.ConfigDict:
  """GLUE fine-tuning of `task` (BERT's recipe: 3 epochs, lr 3e-5, 10% warm-up)."""
  c = ml_collections.ConfigDict()
  c.name = f"glue_{task}"
  c.task = task
  # Pretraining workdir (config.json, tokenizer.model, checkpoints/). Required;
  # '' means a randomly initialised encoder of size `model.*` (tests, baselines).
  c.init_from = config_dict.placeholder(str)
  c.init_step = config_dict.placeholder(int)  # None = the latest checkpoint
  c.model = model_section()
  c.model.dtype = config_dict.placeholder(str)  # None = the pretraining run's
  c.data = ml_collections.ConfigDict(dict(
      tokenizer_model="",        # '' = INIT_FROM's tokenizer (required for random init)
      lowercase=_lowercase_field(),
      # GLUE TSVs; empty = TFDS glue/<task> (prepared as array_record in tfds_data_dir).
      train_file="",
      eval_file="",
      eval_mismatched_file="",   # MNLI only: dev_mismatched.tsv
      predict_file="",           # -> WORKDIR/predictions.tsv (labels ignored if present)
      tfds_data_dir="",
      seq_len=128,
      global_batch_size=32,      # the last batch of an epoch is padded (weight 0)
      eval_batch_size=0,         # 0 = global_batch_size
      seed=0,                    # the per-epoch shuffles
  ))
  c.optim = _optim_section(learning_rate=3e-5, warmup_steps=0, warmup_fraction=0.1)
  c.train = _train_section(num_epochs=3, log_every=50, checkpoint_every=1000,
                           keep_checkpoints=2)
  c.mesh = _mesh_section()
  return c


def apply_variant(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """`configs/x.py:strategy[+option...]` picks the importance strategy and options."""
  if arg:
    strategy, *options = arg.split("+")
    if strategy not in importance.names():
      raise ValueError(f"unknown config variant {strategy!r}; expected one of "
                       f"{importance.names()}")
    config.token_drop.strategy = strategy
    if {"sctd", "sctd_paper"} <= set(options):
      raise ValueError(f"config variant {arg!r}: choose one of sctd and sctd_paper")
    for option in options:
      if option not in OPTIONS:
        raise ValueError(f"unknown config option {option!r} in {arg!r}; expected one of "
                         f"{tuple(OPTIONS)}")
      config.token_drop.update(OPTIONS[option])
  return config


def load_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config file, as `--config=path[:arg]` loads it (for scripts)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("tokendrop_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def is_glue(config) -> bool:
  return "task" in config


def model_config(config, platform: str | None = None) -> BertConfig:
  """The BertConfig of `config.model` (a GLUE config's unset fields left out); with
  `platform`, model.attention='auto' resolved to that platform's kernel."""
  cfg = BertConfig.from_dict({k: v for k, v in config.model.to_dict().items() if v is not None})
  if platform is None:
    return cfg
  from tokendrop_jax.model import attention  # pylint: disable=import-outside-toplevel
  return dataclasses.replace(cfg, attention=attention.resolve(
      cfg.attention, platform, cfg.dtype, cfg.attention_dropout_rate))

