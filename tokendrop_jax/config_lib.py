"""The one config schema (ml_collections) and its validation.

Pretraining (`base_config`) and GLUE fine-tuning (`glue_config`) share the
sections `model`, `optim`, `train` and `mesh` (same fields, same meaning);
`token_drop` is pretraining's, and `data` describes each job's input.
`configs/*.py` start from one of the two and change what they need; every
field a user can set is here, with its default. `validate` runs before any
compile and names the offending field; unknown fields are refused, and the
flat field names that `configs/glue.py` had before are refused with the new
name.
"""
from __future__ import annotations

import dataclasses

import ml_collections
from ml_collections import config_dict

from tokendrop_jax import importance, partitioning
from tokendrop_jax.data import glue, masking
from tokendrop_jax.model.bert import BertConfig

# Options beyond the paper, appended as `strategy+option[+option]` (e.g. `random+layerwise`).
OPTIONS = {
    "sctd": dict(consistency_weight=1.0, consistency_form="head"),  # our ScTD variant
    "sctd_paper": dict(consistency_weight=0.05, consistency_form="paper"),  # the authors' ScTD
    "schedule": dict(keep_schedule_stages=4),       # keep rises in 4 static stages, then full
    "layerwise": dict(layerwise=True),              # random-LTD subsets per middle layer
}

CONSISTENCY_FORMS = ("head", "paper")

# data.tokenizer_type: a SentencePiece model type, or BERT's WordPiece (trained when
# data.tokenizer_model is unset). data.tokenizer_model: one of these files.
TOKENIZER_TYPES = ("unigram", "bpe", "wordpiece")
TOKENIZER_SUFFIXES = (".model", ".json", ".txt")  # SentencePiece, HF tokenizer.json, vocab.txt

# train.prng_impl -> jax's name for it. threefry (the default) is jax's and the same
# bits as before the option; rbg/unsafe_rbg give other streams, so other dropout masks
# and random scores. Dropout's threefry bits are fused with their use
# (model/random_bits.py), which made threefry the fastest on CPU
# (benchmarks/results/step_options_cpu.json); on a TPU, rbg is the usual choice.
PRNG_IMPLS = {"threefry": "threefry2x32", "rbg": "rbg", "unsafe_rbg": "unsafe_rbg"}

# Model fields a fine-tuning run sets for itself; the others (sizes) come from
# the pretraining run it starts from.
FINETUNE_MODEL_FIELDS = ("dropout_rate", "attention_dropout_rate", "dtype", "remat", "attention")

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


# ---------------------------------------------------------------------------
# The sections.


def _model_section() -> ml_collections.ConfigDict:
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


def lowercase_option(value, field: str = "data.lowercase") -> bool | None:
  """`data.lowercase` -> the tokenizer's argument: a bool, or None (infer)."""
  if value is None or (isinstance(value, str) and value == "auto"):
    return None
  if isinstance(value, bool):
    return value
  raise ValueError(f"{field} must be True, False or 'auto', got {value!r}")


def lowercase_name(value):
  """One spelling of each `data.lowercase` value (None == 'auto'), for resume checks."""
  option = lowercase_option(value)
  return "auto" if option is None else option


def check_tokenizer_fields(data) -> None:
  """data.tokenizer_model / tokenizer_type / lowercase, before any file is read."""
  lowercase = lowercase_option(data.lowercase)
  model = data.tokenizer_model
  if model and not model.endswith(TOKENIZER_SUFFIXES):
    raise ValueError(f"data.tokenizer_model={model!r}: expected a SentencePiece .model, an HF "
                     "tokenizer.json or BERT's vocab.txt (the file name's ending says which)")
  if "tokenizer_type" in data and data.tokenizer_type not in TOKENIZER_TYPES:
    raise ValueError(f"data.tokenizer_type must be one of {TOKENIZER_TYPES}, got "
                     f"{data.tokenizer_type!r}")
  # Fine-tuning without data.tokenizer_model reads INIT_FROM's file, which says its kind.
  sentencepiece = (model.endswith(".model") if model else
                   "tokenizer_type" in data and data.tokenizer_type != "wordpiece")
  if lowercase is not None and sentencepiece:
    what = (f"data.tokenizer_model={model!r}" if model else
            f"data.tokenizer_type={data.tokenizer_type!r}")
    raise ValueError(f"data.lowercase={lowercase} is for WordPiece tokenizers, but {what} is "
                     "SentencePiece (it normalises text itself): leave data.lowercase 'auto'")


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
  c.model = _model_section()
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
      # repeated, below it partly used (text_builder.Mixture).
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
  c.model = _model_section()
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


TFDS_PREFIX = "tfds:"  # a data.sources member that is a TFDS dataset: tfds:NAME@WEIGHT


def tfds_member(pattern: str) -> str:
  """The TFDS name of a `data.sources` member 'tfds:NAME', or '' for a file pattern."""
  return pattern[len(TFDS_PREFIX):] if pattern.startswith(TFDS_PREFIX) else ""


def mixture_sources(spec: str) -> list[tuple[str, float]]:
  """`data.sources` 'PATTERN@WEIGHT,PATTERN@WEIGHT,...' -> [(pattern, weight)].

  Weights are relative (they need not sum to 1); each must be > 0. A pattern
  'tfds:NAME' is a TFDS text dataset (its `data.tfds_train_split`, field
  `data.tfds_text_field`, prepared as ArrayRecord in `data.tfds_data_dir`).
  """
  out = []
  for entry in spec.split(","):
    pattern, _, weight = entry.strip().rpartition("@")
    try:
      value = float(weight)
    except ValueError:
      value = float("nan")
    if pattern == TFDS_PREFIX:
      raise ValueError(f"data.sources: {entry.strip()!r} names no TFDS dataset; expected "
                       "e.g. 'tfds:wikipedia/20230601.en@0.7'")
    if not pattern or not 0 < value < float("inf"):
      raise ValueError(f"data.sources: {entry.strip()!r} is not PATTERN@WEIGHT with a weight > 0; "
                       "expected e.g. 'gs://b/wiki/*.parquet@0.7,gs://b/books/*.txt@0.3'")
    out.append((pattern, value))
  return out


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


# ---------------------------------------------------------------------------
# Validation.


def _unknown_fields(config, schema, prefix="") -> None:
  for key in config.keys():
    name = f"{prefix}{key}"
    if key not in schema:
      if not prefix and is_glue(schema) and key in GLUE_RENAMED:
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
  cfg = model_config(config)
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
  if train.prng_impl not in PRNG_IMPLS:
    raise ValueError(f"train.prng_impl must be one of {tuple(PRNG_IMPLS)}, got "
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
  cfg = model_config(config)
  attention.check(cfg.attention, platform or jax.default_backend(), cfg.dtype,
                  cfg.attention_dropout_rate)


def validate(config: ml_collections.ConfigDict) -> None:
  """Fail fast, naming the field, on anything that would break later."""
  if is_glue(config):
    validate_glue(config)
    return
  _unknown_fields(config, base_config())
  cfg = _validate_shared(config)
  td, data, optim, train = config.token_drop, config.data, config.optim, config.train
  strategy = importance.get(td.strategy)
  _positive(data, ("seq_len", "max_predictions_per_seq", "global_batch_size", "num_shards"),
            "data")
  _positive(train, ("num_steps", "eval_every", "eval_batches"), "train")
  check_tokenizer_fields(data)
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
    mixture_sources(data.sources)
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
  _unknown_fields(config, glue_config(spec.name))
  if config.init_from is None:
    raise ValueError("init_from is required: --config.init_from=PRETRAIN_WORKDIR (or "
                     "--config.init_from='' for a randomly initialised encoder)")
  if config.init_from:
    default = _model_section()
    changed = [k for k, v in config.model.items()
               if k not in FINETUNE_MODEL_FIELDS and default.get(k) != v]
    if changed:
      raise ValueError(
          f"config.model.{changed[0]} is set, but the model's sizes come from "
          f"{config.init_from}/config.json; model.* sizes only apply with "
          f"--config.init_from='' (random init); fine-tuning sets only model."
          f"{{{','.join(FINETUNE_MODEL_FIELDS)}}}")
  _validate_shared(config)
  data, train = config.data, config.train
  _positive(data, ("seq_len", "global_batch_size"), "data")
  _positive(train, ("num_epochs",), "train")
  if config.optim.grad_accum_steps != 1:
    raise ValueError(f"optim.grad_accum_steps={config.optim.grad_accum_steps}: fine-tuning "
                     "does not accumulate gradients; use 1 and a smaller data.global_batch_size")
  check_tokenizer_fields(data)
  if not isinstance(data.eval_batch_size, int) or data.eval_batch_size < 0:
    raise ValueError(f"data.eval_batch_size must be an int >= 0, got {data.eval_batch_size!r}")
  if data.eval_mismatched_file and spec.name != "mnli":
    raise ValueError(f"data.eval_mismatched_file is for mnli only, not {spec.name}")
  if data.eval_mismatched_file and not data.eval_file:
    raise ValueError("data.eval_mismatched_file needs data.eval_file (dev_matched.tsv)")
