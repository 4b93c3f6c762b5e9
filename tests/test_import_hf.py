"""Import from Hugging Face: the same logits, the same tensors back, a workdir that
train, finetune and export accept; bad input refused before anything is written.

Needs transformers + torch (requirements-dev.txt); skipped without them. No network:
the vocabulary is trained on the demo corpus and the models are random.
"""
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from absl import flags

from tests import hf_reference
from tests.resume_checks import final_state, losses, sigterm_once_training
from tests.test_config import load
from tokendrop_jax import config_lib, export
from tokendrop_jax import import_hf as import_lib
from tokendrop_jax.data import demo_corpus
from tokendrop_jax.data import tokenizer as tokenizer_lib
from tokendrop_jax.data import wordpiece
from tokendrop_jax.hf import bert_config, params as hf_params, tokenizer_files, weights
from tokendrop_jax.model.bert import BertForPretraining
from tokendrop_jax.training import checkpoint, loop, pretrained
from tokendrop_jax.training import workdir as workdir_lib

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
flags.FLAGS.mark_as_parsed()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 300
SENTENCES = ["Return the number of items in a container.", "Café naïve: ½ of ﬁve",
             "digits 0123456789 and 3.14159!", "x", ""]


def hf_config(act="gelu", **kw):
  return transformers.BertConfig(
      vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
      intermediate_size=48, max_position_embeddings=64, hidden_act=act, **kw)


def save_model(path, cls=None, act="gelu", vocab_txt=None, tokenizer="json", seed=0,
               init_range=0.02, **save):
  """A random `cls` (BertForMaskedLM) saved as transformers saves it -> the model."""
  torch.manual_seed(seed)
  model = (cls or transformers.BertForMaskedLM)(
      hf_config(act, initializer_range=init_range)).eval()
  with torch.no_grad():  # LayerNorms and biases away from their init, so the test sees them
    for name, p in model.named_parameters():
      if "LayerNorm" in name or name.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  model.save_pretrained(path, **{"safe_serialization": True, **save})
  if vocab_txt:
    if tokenizer == "json":
      transformers.BertTokenizerFast(vocab_txt, do_lower_case=True).save_pretrained(path)
    else:  # vocab.txt + tokenizer_config.json only, as older model folders have
      shutil.copyfile(vocab_txt, os.path.join(path, "vocab.txt"))
      with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True}, f)
  return model


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """The demo corpus and a WordPiece vocab.txt of VOCAB pieces trained on it."""
  root = tmp_path_factory.mktemp("hf_corpus")
  train, valid = demo_corpus.write_demo_corpus(str(root / "corpus"), max_bytes=400_000)
  vocab = wordpiece.train_wordpiece(train, VOCAB, str(root / "vocab.txt"))
  return root, train, valid, vocab


def tensors(path):
  return weights.read_tensors(weights.weight_files(str(path)))


def cfg_of(act="gelu_tanh"):
  c = load("tiny")
  bert_config.apply_model(c, hf_config({"gelu_tanh": "gelu_new", "gelu": "gelu"}[act]).to_dict())
  return config_lib.model_config(c)


def our_logits(params, cfg, ids, mask, types):
  positions = np.tile(np.arange(ids.shape[1]), (ids.shape[0], 1))  # every position
  return np.asarray(BertForPretraining(cfg).apply({"params": params}, ids, mask, types,
                                                  positions))


def batch(seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, VOCAB, (3, 20)).astype(np.int32)
  types = rng.integers(0, 2, ids.shape).astype(np.int32)
  mask = np.ones(ids.shape, np.int32)
  mask[1, 12:] = 0
  mask[2, 3:] = 0
  return ids, mask, types


def hf_logits(model, ids, mask, types):
  return hf_reference.outputs(model, ids, mask, types)


# ---------------------------------------------------------------------------
# Weights: pure functions, no workdir.


@pytest.mark.parametrize("act,ours", [("gelu", "gelu"), ("gelu_new", "gelu_tanh")])
def test_mlm_logits_equal_transformers(tmp_path, act, ours):
  model = save_model(tmp_path, act=act, init_range=0.3)  # large activations: GELUs differ
  hf = bert_config.read_hf_config(str(tmp_path))
  assert bert_config.model_fields(hf)["hidden_act"] == ours
  c = load("tiny")
  cfg = config_lib.model_config(bert_config.apply_model(c, hf))
  assert cfg.hidden_act == ours and cfg.initializer_range == 0.3
  params, has_head = hf_params.params_from_hf(tensors(tmp_path), cfg, "test")
  assert has_head
  ids, mask, types = batch()
  got, want = our_logits(params, cfg, ids, mask, types), hf_logits(model, ids, mask, types)
  np.testing.assert_allclose(got[mask > 0], want[mask > 0], atol=1e-4, rtol=0)
  # The other GELU form gives other logits: the test can tell them apart.
  other = cfg_of("gelu" if ours == "gelu_tanh" else "gelu_tanh")
  assert np.abs(our_logits(params, other, ids, mask, types) - want)[mask > 0].max() > 1e-3


def test_hf_tensors_round_trip_bitwise_through_the_shared_table(tmp_path):
  save_model(tmp_path)
  original = tensors(tmp_path)
  cfg = cfg_of("gelu")
  params, _ = hf_params.params_from_hf(original, cfg, "test")
  back = hf_params.hf_state_dict(params, cfg)
  assert set(back) <= set(original)
  for name, x in back.items():
    assert x.dtype == np.float32 and x.tobytes() == original[name].astype(np.float32).tobytes()


def test_bfloat16_checkpoints_import_as_their_float32_values(tmp_path):
  """Recent checkpoints are saved in bfloat16 (safetensors' numpy loader refuses them)."""
  model = save_model(tmp_path / "f32")
  model.to(torch.bfloat16).save_pretrained(tmp_path / "bf16", safe_serialization=True)
  bf16 = tensors(tmp_path / "bf16")
  f32 = tensors(tmp_path / "f32")
  assert set(bf16) == set(f32)
  for name, x in bf16.items():
    if not name.endswith("position_ids"):
      assert x.dtype == np.float32, name  # bf16 -> f32 is exact: compare with torch's rounding
      rounded = torch.from_numpy(f32[name]).to(torch.bfloat16).float().numpy()
      np.testing.assert_array_equal(x, rounded, err_msg=name)


def test_bert_for_pretraining_imports_its_mlm_head(tmp_path):
  model = save_model(tmp_path, transformers.BertForPreTraining)
  names = set(tensors(tmp_path))
  assert "cls.seq_relationship.weight" in names and "bert.pooler.dense.weight" in names
  cfg = cfg_of("gelu")
  params, has_head = hf_params.params_from_hf(tensors(tmp_path), cfg, "test")
  assert has_head
  ids, mask, types = batch(1)
  np.testing.assert_allclose(our_logits(params, cfg, ids, mask, types)[mask > 0],
                             hf_logits(model, ids, mask, types)[mask > 0], atol=1e-4, rtol=0)


def test_bert_model_without_head_gives_the_encoder_only(tmp_path):
  model = save_model(tmp_path, transformers.BertModel)
  from safetensors.numpy import load_file
  saved = load_file(str(tmp_path / "model.safetensors"))
  assert "embeddings.word_embeddings.weight" in saved  # a BertModel saves without `bert.`
  cfg = cfg_of("gelu")
  params, has_head = hf_params.params_from_hf(tensors(tmp_path), cfg, "test")
  assert not has_head and set(params) == {"bert"}
  from tokendrop_jax.model.encoder import BertEncoder
  ids, mask, types = batch(2)
  got = np.asarray(BertEncoder(cfg).apply({"params": params["bert"]}, ids, mask, types))
  want = hf_reference.outputs(model, ids, mask, types, "last_hidden_state")
  np.testing.assert_allclose(got[mask > 0], want[mask > 0], atol=1e-4, rtol=0)


def test_sharded_safetensors_equal_the_single_file(tmp_path):
  save_model(tmp_path / "one")
  save_model(tmp_path / "sharded", max_shard_size="20KB")
  assert os.path.exists(tmp_path / "sharded" / weights.WEIGHTS_INDEX)
  assert len(weights.weight_files(str(tmp_path / "sharded"))) > 2
  one, sharded = tensors(tmp_path / "one"), tensors(tmp_path / "sharded")
  assert sorted(one) == sorted(sharded)
  for name in one:
    np.testing.assert_array_equal(one[name], sharded[name])


def test_legacy_gamma_beta_names_are_read(tmp_path):
  from safetensors.numpy import load_file, save_file
  save_model(tmp_path)
  sd = load_file(str(tmp_path / "model.safetensors"))
  legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                     "LayerNorm.beta"): v
            for k, v in sd.items()}
  assert legacy != sd
  save_file(legacy, str(tmp_path / "model.safetensors"))
  assert tensors(tmp_path).keys() == sd.keys()


# ---------------------------------------------------------------------------
# Refused, naming the file or field; nothing written.


def test_pytorch_bin_only_is_refused_with_how_to_convert(tmp_path, corpus):
  save_model(tmp_path / "hf", safe_serialization=False, vocab_txt=corpus[3])
  assert os.path.exists(tmp_path / "hf" / "pytorch_model.bin")
  with pytest.raises(ValueError, match=r"(?s)pytorch_model\.bin.*save_pretrained\(.*"
                     r"safe_serialization=True"):
    import_lib.import_hf(str(tmp_path / "hf"), str(tmp_path / "w"), load("tiny"))
  assert not os.path.exists(tmp_path / "w")


def test_a_model_field_set_otherwise_is_refused_naming_it(tmp_path, corpus):
  save_model(tmp_path / "hf", vocab_txt=corpus[3])
  c = load("tiny")
  c.model.hidden_size = 64
  assert import_lib.explicit_model_fields(
      ["x", "--config=configs/tiny.py", "--config.model.hidden_size=64"]) == {"hidden_size"}
  with pytest.raises(ValueError, match=r"--config\.model\.hidden_size=64 .* hidden_size=32"):
    import_lib.import_hf(str(tmp_path / "hf"), str(tmp_path / "w"), c, {"hidden_size"})
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("change,named", [
    ({"model_type": "roberta"}, "model_type='roberta'"),
    ({"architectures": ["DistilBertForMaskedLM"]}, "DistilBertForMaskedLM"),
    ({"position_embedding_type": "relative_key"}, "position_embedding_type='relative_key'"),
    ({"hidden_act": "relu"}, "hidden_act='relu'"),
    ({"vocab_size": VOCAB + 1}, "vocab_size"),
])
def test_unsupported_configs_are_refused_naming_the_field(tmp_path, corpus, change, named):
  save_model(tmp_path / "hf", vocab_txt=corpus[3])
  path = tmp_path / "hf" / "config.json"
  hf = json.loads(path.read_text())
  hf.update(change)
  path.write_text(json.dumps(hf))
  with pytest.raises(ValueError, match=named):
    import_lib.import_hf(str(tmp_path / "hf"), str(tmp_path / "w"), load("tiny"))
  assert not os.path.exists(tmp_path / "w")


def test_import_into_a_nonempty_workdir_is_refused(tmp_path, corpus):
  save_model(tmp_path / "hf", vocab_txt=corpus[3])
  (tmp_path / "w").mkdir()
  (tmp_path / "w" / "notes.txt").write_text("mine")
  with pytest.raises(FileExistsError, match="not empty"):
    import_lib.import_hf(str(tmp_path / "hf"), str(tmp_path / "w"), load("tiny"))
  assert os.listdir(tmp_path / "w") == ["notes.txt"]


# ---------------------------------------------------------------------------
# The workdir: export, finetune and train accept it.


def import_config(root):
  c = load("tiny")
  c.data.update(demo_corpus=False, train_files=str(root / "corpus" / "train.txt"),
                valid_files=str(root / "corpus" / "valid.txt"),
                dataset_dir=str(root / "data"))  # built by the first run, reused
  c.train.update(num_steps=12, log_every=2, eval_every=12, eval_batches=1, checkpoint_every=4,
                 keep_checkpoints=10)
  return c


def cli_import(hf, workdir, root):
  """`python -m tokendrop_jax.import_hf` with import_config's fields -> the process."""
  c = import_config(root)
  args = [f"--config.data.{k}={c.data[k]}" for k in ("demo_corpus", "train_files",
                                                      "valid_files", "dataset_dir")]
  args += [f"--config.train.{k}={c.train[k]}" for k in ("num_steps", "log_every", "eval_every",
                                                         "eval_batches", "checkpoint_every",
                                                         "keep_checkpoints")]
  return subprocess.run(
      [sys.executable, "-m", "tokendrop_jax.import_hf", f"--hf_dir={hf}", f"--workdir={workdir}",
       "--config=configs/tiny.py:loss_ema", *args],
      capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})


@pytest.fixture(scope="module")
def imported(corpus, tmp_path_factory):
  """A random BertForMaskedLM (with tokenizer.json) imported -> (hf dir, workdir)."""
  hf = str(tmp_path_factory.mktemp("hf") / "model")
  save_model(hf, vocab_txt=corpus[3])
  workdir = str(tmp_path_factory.mktemp("imported") / "w")
  return hf, import_lib.import_hf(hf, workdir, config_lib.apply_variant(import_config(corpus[0]),
                                                                        "loss_ema"))


def test_workdir_holds_config_tokenizer_and_a_fresh_step0_state(imported):
  hf, workdir = imported
  assert sorted(os.listdir(workdir)) == ["checkpoints", "config.json", "tokenizer.json"]
  config = workdir_lib.read_config(workdir)
  assert (config.model.hidden_size, config.model.num_layers, config.model.vocab_size,
          config.model.hidden_act) == (32, 4, VOCAB, "gelu")
  assert config.token_drop.strategy == "loss_ema" and config.train.num_steps == 12
  tok = tokenizer_lib.load_tokenizer(workdir_lib.tokenizer_path(workdir))
  assert tok.special_ids == (0, 1, 2, 3, 4) and tok.vocab_size == VOCAB
  run = loop.build(config, tok.special_ids, devices=jax.devices()[:1])
  ckpt = checkpoint.Checkpointer(workdir_lib.checkpoint_dir(workdir), save_every=1, keep=0)
  try:
    state, step = ckpt.restore(run.layout.abstract)
  finally:
    ckpt.close()
  state = jax.device_get(state)
  assert step == 0 and int(state.step) == 0
  np.testing.assert_array_equal(state.importance, np.full(VOCAB, 10.0, np.float32))  # ema_init
  adam = [x for x in jax.tree_util.tree_leaves(state.opt_state) if np.ndim(x) > 0]
  assert adam and all(not np.any(x) for x in adam)  # a fresh optimizer: mu = nu = 0


def test_import_then_export_gives_the_same_tensors_and_token_ids(imported, tmp_path):
  hf, workdir = imported
  out = export.export(workdir, str(tmp_path / "out"))
  from safetensors.numpy import load_file
  original, back = load_file(os.path.join(hf, "model.safetensors")), load_file(
      os.path.join(out, "model.safetensors"))
  assert set(back) <= set(original) and len(back) == 4 * 16 + 10
  for name, x in back.items():
    assert x.tobytes() == original[name].tobytes(), name
  ours = transformers.AutoTokenizer.from_pretrained(out)
  theirs = transformers.AutoTokenizer.from_pretrained(hf)
  for text in SENTENCES:
    assert ours(text)["input_ids"] == theirs(text)["input_ids"], text


def test_finetune_accepts_the_imported_workdir(imported):
  _, workdir = imported
  c = config_lib.glue_config("sst2")
  c.init_from = workdir
  c.data.seq_len = 32
  init = pretrained.resolve_init(c)
  assert init.model_cfg.hidden_size == 32 and init.model_cfg.hidden_act == "gelu"
  assert init.tokenizer.kind == "wordpiece"
  params, _, step = pretrained.load_pretrained(workdir)
  assert step == 0 and set(params) == {"bert", "mlm"}


def test_vocab_txt_and_tokenizer_config_without_tokenizer_json(tmp_path, corpus):
  save_model(tmp_path / "hf", vocab_txt=corpus[3], tokenizer="txt")
  assert not os.path.exists(tmp_path / "hf" / "tokenizer.json")
  tok = tokenizer_files.read_tokenizer(str(tmp_path / "hf"))
  assert tok.kind == "wordpiece" and tok.lowercase and tok.vocab_size == VOCAB
  fast = transformers.BertTokenizerFast(corpus[3], do_lower_case=True)
  for text in SENTENCES:
    assert tok.encode(text) == fast(text, add_special_tokens=False)["input_ids"]


@pytest.mark.slow
def test_bert_model_import_initialises_the_head_as_bert(tmp_path, corpus, caplog):
  save_model(tmp_path / "hf", transformers.BertModel, vocab_txt=corpus[3], tokenizer="txt")
  c = load("tiny")
  c.data.update(demo_corpus=False)
  with caplog.at_level("WARNING"):
    workdir = import_lib.import_hf(str(tmp_path / "hf"), str(tmp_path / "w"), c)
  assert "no MLM head" in caplog.text
  params, _, _ = pretrained.load_pretrained(workdir)
  encoder, _ = hf_params.params_from_hf(tensors(tmp_path / "hf"), config_lib.model_config(
      workdir_lib.read_config(workdir)), "test")
  for x, y in zip(jax.tree_util.tree_leaves(params["bert"]),
                  jax.tree_util.tree_leaves(encoder["bert"]), strict=True):
    np.testing.assert_array_equal(x, y)
  np.testing.assert_array_equal(params["mlm"]["output_bias"], 0)
  np.testing.assert_array_equal(params["mlm"]["transform_norm"]["scale"], 1)
  kernel = params["mlm"]["transform"]["kernel"]  # BERT's truncated normal, initializer_range
  assert 0.01 < kernel.std() < 0.03 and np.abs(kernel).max() <= 2 * 0.02 + 1e-6


# ---------------------------------------------------------------------------
# Continued pretraining: token dropping, resumed bit for bit after SIGTERM.


@pytest.mark.slow
def test_continued_pretraining_resumes_bit_exactly_after_sigterm(imported, corpus, tmp_path):
  hf, _ = imported
  workdir, full, preempted = (str(tmp_path / n) for n in ("cli", "full", "preempted"))
  proc = cli_import(hf, workdir, corpus[0])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"python -m tokendrop_jax.train --workdir={workdir}" in proc.stdout
  shutil.copytree(workdir, full)
  shutil.copytree(workdir, preempted)
  config = workdir_lib.read_config(workdir)  # what `train --workdir=W` runs with
  summary = loop.train_and_evaluate(config, full)
  assert summary["step"] == 12 and summary["jit_cache_sizes"]["drop32"] == 1

  sent = sigterm_once_training(preempted)
  first = loop.train_and_evaluate(workdir_lib.read_config(preempted), preempted)
  assert sent and 2 <= first["step"] < 12
  second = loop.train_and_evaluate(workdir_lib.read_config(preempted), preempted)
  assert second["step"] == 12
  special_ids = tokenizer_lib.load_tokenizer(workdir_lib.tokenizer_path(full)).special_ids
  a, _ = final_state(config, full, special_ids)
  b, _ = final_state(config, preempted, special_ids)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  assert losses(full) == losses(preempted)
