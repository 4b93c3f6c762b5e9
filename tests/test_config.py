"""Every config loads and validates; bad fields fail before compiling, named."""
import glob
import importlib.util
import os

import pytest

from tokendrop_jax import config_checks
from tokendrop_jax.data.glue_batches import GlueFiles
from tokendrop_jax.training.input_settings import InputSettings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAIN_CONFIGS = ["tiny", "demo", "bench_cpu", "small", "bert_base", "bert_large"]


def load(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("name", PRETRAIN_CONFIGS)
@pytest.mark.parametrize("variant", [None, "none", "loss_ema", "frequency", "random"])
def test_configs_validate(name, variant):
  c = load(name, variant)
  config_checks.validate(c)
  assert c.token_drop.strategy == (variant or "loss_ema")


@pytest.mark.parametrize("name", PRETRAIN_CONFIGS)
def test_input_settings_carry_every_data_field(name):
  """The input code sees `InputSettings`, not the config: a new `data.*` field must reach
  it (or be listed here as read elsewhere), and each arrives with its config value."""
  c = load(name)
  s = InputSettings.of(c)
  carried = {"dataset_dir": s.dataset_dir}
  for part in (s.corpus, s.tokenizer, s.batches):
    carried.update(vars(part))
  read_elsewhere = {"num_shards"}  # host_rows.plan: which process reads which shards
  assert set(c.data) - read_elsewhere == set(carried) - {"vocab_size", "eval_batches"}
  assert all(carried[k] == c.data[k] for k in set(c.data) - read_elsewhere)
  assert (carried["vocab_size"], carried["eval_batches"]) == (c.model.vocab_size,
                                                             c.train.eval_batches)


def test_glue_files_carry_the_data_fields_fine_tuning_reads():
  c = load("glue", "sst2")
  read_elsewhere = {"global_batch_size", "eval_batch_size", "seed",  # finetune_loop: batches
                    "tokenizer_model", "lowercase"}  # pretrained.resolve_init: the tokenizer
  carried = vars(GlueFiles.of(c.data))
  assert set(c.data) - read_elsewhere == set(carried)
  assert all(c.data[k] == v for k, v in carried.items())


def test_paper_recipe():
  c = load("bert_base")
  assert (c.data.global_batch_size, c.data.seq_len, c.token_drop.keep_tokens) == (512, 512, 256)
  assert (c.train.num_steps, c.optim.learning_rate, c.optim.weight_decay) == (1_000_000, 1e-4, 0.01)
  assert (c.optim.warmup_steps, c.data.max_predictions_per_seq) == (10_000, 76)
  assert (c.token_drop.ema_init, c.token_drop.ema_beta) == (10.0, 0.995)
  assert c.model.num_layers == 12 and load("bert_large").model.num_layers == 24


def test_unknown_variant():
  with pytest.raises(ValueError, match="variant 'entropy'"):
    load("tiny", "entropy")


BAD = [
    ("token_drop.keep_tokens", 65, "token_drop.keep_tokens"),
    ("token_drop.keep_tokens", 0, "token_drop.keep_tokens"),
    ("token_drop.strategy", "entropy", "token_drop.strategy"),
    ("model.num_layers", 3, "model.num_layers"),
    ("model.num_layers", -2, "model.num_layers"),
    ("model.num_heads", 3, "model.num_heads"),
    ("model.hidden_size", 0, "model.hidden_size"),
    ("model.dropout_rate", 1.5, "model.dropout_rate"),
    ("model.dtype", "float17", "model.dtype"),
    ("data.seq_len", 4, "data.seq_len"),
    ("data.seq_len", 128, "model.max_position"),
    ("data.global_batch_size", -1, "data.global_batch_size"),
    ("data.max_predictions_per_seq", 100, "data.max_predictions_per_seq"),
    ("data.mask_prob", 0.0, "data.mask_prob"),
    ("optim.grad_accum_steps", 3, "optim.grad_accum_steps"),
    ("optim.learning_rate", -1.0, "optim.learning_rate"),
    ("train.num_steps", 0, "train.num_steps"),
    ("train.nan_policy", "ignore", "train.nan_policy"),
    ("token_drop.ema_beta", 1.0, "token_drop.ema_beta"),
    ("token_drop.full_start_fraction", 0.7, "full_end_fraction"),
    ("mesh.data", 0, "mesh.data"),
    ("mesh.tensor", -3, "mesh.tensor"),
    # negative sizes (tests/test_faults.py also checks that nothing compiles first)
    ("data.seq_len", -64, "data.seq_len"),
    ("data.max_predictions_per_seq", -1, "data.max_predictions_per_seq"),
    ("model.intermediate_size", -256, "model.intermediate_size"),
    ("model.vocab_size", -1, "model.vocab_size"),
    ("model.num_heads", 0, "model.num_heads"),
    ("train.checkpoint_every", -10, "train.checkpoint_every"),
    ("train.keep_checkpoints", -1, "train.keep_checkpoints"),
    ("train.eval_batches", -4, "train.eval_batches"),
    ("optim.grad_accum_steps", 0, "optim.grad_accum_steps"),
    ("optim.warmup_steps", -5, "optim.warmup_steps"),
    ("mesh.fsdp", -2, "mesh.fsdp"),
]


@pytest.mark.parametrize("field,value,named", BAD, ids=[f"{f}={v}" for f, v, _ in BAD])
def test_bad_field_is_named(field, value, named):
  c = load("tiny")
  c.token_drop.full_end_fraction = 0.5
  if field != "token_drop.full_start_fraction":
    c.token_drop.full_end_fraction = 0.0
  section, key = field.split(".")
  c[section][key] = value
  with pytest.raises(ValueError, match=named.replace(".", r"\.")):
    config_checks.validate(c)


def test_unknown_model_field():
  c = load("tiny")
  c.model.hidden = 3
  with pytest.raises(ValueError, match="model.hidden"):
    config_checks.validate(c)


def test_full_model_needs_no_split():
  c = load("tiny", "none")
  c.model.num_layers = 2
  config_checks.validate(c)


def test_every_config_file_is_covered():
  names = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))}
  assert set(PRETRAIN_CONFIGS) <= names
