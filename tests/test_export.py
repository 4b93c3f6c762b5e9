"""Export to the Hugging Face BERT format: same logits, same token ids, safe files.

The round-trip tests need transformers + torch (requirements-dev.txt) and are
skipped without them; the layout and error tests need neither.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import hf_reference
from tokendrop_jax import config_lib
from tokendrop_jax import export as export_lib
from tokendrop_jax.data import demo_corpus
from tokendrop_jax.data import tokenizer as tokenizer_lib
from tokendrop_jax.hf import bert_config, params as hf_params, tokenizer_files
from tokendrop_jax.model.bert import BertForPretraining
from tokendrop_jax.model.config import BertConfig
from tokendrop_jax.training import pretrained
from tokendrop_jax.training import workdir as workdir_lib
from tests.test_pretrained import shared_pretrain_workdir

SENTENCES = [
    "Return the number of items in a container.",
    "  leading,   multiple   and trailing spaces  ",
    "Café naïve über Straße: ½ of ﬁve Ｆｕｌｌ ｗｉｄｔｈ",  # NFKC changes these
    "digits 0123456789 and 3.14159 + 2 = 5.14159!",
    "tab\there and a\nnewline",
    "ΑΒΓ 😀 東京: characters the tokenizer never saw",
    "x",
    "",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return shared_pretrain_workdir(tmp_path_factory)[0]


@pytest.fixture(scope="module")
def exported(workdir, tmp_path_factory):
  """The folder the command line writes (latest step)."""
  out = str(tmp_path_factory.mktemp("hf") / "model")
  proc = subprocess.run(
      [sys.executable, "-m", "tokendrop_jax.export", f"--workdir={workdir}", f"--output={out}"],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == out
  return out


def _our_logits(workdir, ids, mask, types, step=None):
  params, config, _ = pretrained.load_pretrained(workdir, step)
  model = BertForPretraining(config_lib.model_config(config))
  positions = np.tile(np.arange(ids.shape[1]), (ids.shape[0], 1))  # every position
  return np.asarray(model.apply({"params": params}, ids, mask, types, positions))


def _random_batch(vocab_size, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, vocab_size, (3, 24)).astype(np.int32)
  types = rng.integers(0, 2, ids.shape).astype(np.int32)
  mask = np.ones(ids.shape, np.int32)
  mask[1, 15:] = 0  # padding the model must not attend to
  mask[2, 4:] = 0
  return ids, mask, types


# ---------------------------------------------------------------------------
# No transformers needed.


def test_folder_layout(workdir, exported):
  from safetensors.numpy import load_file
  names = set(os.listdir(exported))
  assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json"} <= names
  assert not [n for n in os.listdir(os.path.dirname(exported)) if n.startswith(".")]
  with open(os.path.join(exported, "config.json")) as f:
    hf = json.load(f)
  assert hf["model_type"] == "bert" and hf["architectures"] == ["BertForMaskedLM"]
  assert hf["hidden_act"] == "gelu_new" and hf["layer_norm_eps"] == 1e-12
  assert (hf["vocab_size"], hf["hidden_size"], hf["num_hidden_layers"]) == (300, 32, 4)
  params, config, step = pretrained.load_pretrained(workdir)
  assert step == 5
  tensors = load_file(os.path.join(exported, "model.safetensors"))
  expected = hf_params.hf_state_dict(params, config_lib.model_config(config))
  assert set(tensors) == set(expected)
  assert "bert.encoder.layer.3.attention.self.query.weight" in tensors
  assert "cls.predictions.bias" in tensors
  for k, v in expected.items():
    assert tensors[k].dtype == np.float32
    np.testing.assert_array_equal(tensors[k], v)
  # torch Linear is [out, in]: the transpose of the Flax kernel.
  np.testing.assert_array_equal(tensors["bert.encoder.layer.0.intermediate.dense.weight"],
                                params["bert"]["layer_0"]["intermediate"]["kernel"].T)
  special = json.load(open(os.path.join(exported, "special_tokens_map.json")))
  assert special == {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
                     "sep_token": "[SEP]", "mask_token": "[MASK]"}


def test_refuses_to_overwrite(workdir, tmp_path):
  out = tmp_path / "model"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  with pytest.raises(FileExistsError, match=r"model already exists.*--overwrite"):
    export_lib.export(workdir, str(out))
  assert os.listdir(out) == ["keep.txt"]
  export_lib.export(workdir, str(out), step=3, overwrite=True)
  assert not (out / "keep.txt").exists()
  assert json.load(open(out / "tokendrop_export.json"))["step"] == 3
  assert sorted(os.listdir(tmp_path)) == ["model"]  # no temp or old folders left
  empty = tmp_path / "empty"
  empty.mkdir()  # An empty folder is fine to fill.
  export_lib.export(workdir, str(empty))


def test_missing_checkpoint_is_a_clear_error(workdir, tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  for name in ("config.json", "tokenizer.model"):
    (run / name).write_bytes(open(os.path.join(workdir, name), "rb").read())
  out = tmp_path / "out"
  with pytest.raises(FileNotFoundError, match=r"No checkpoint in .*run.checkpoints"):
    export_lib.export(str(run), str(out))
  with pytest.raises(FileNotFoundError, match="nowhere"):
    export_lib.export(str(tmp_path / "nowhere"), str(out))
  assert not out.exists() and sorted(os.listdir(tmp_path)) == ["run"]
  proc = subprocess.run(
      [sys.executable, "-m", "tokendrop_jax.export", f"--workdir={run}", f"--output={out}"],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode != 0
  assert f"No checkpoint in {run}" in proc.stderr


def test_params_that_do_not_fit_the_config(workdir):
  import dataclasses
  params, config, _ = pretrained.load_pretrained(workdir)
  cfg = config_lib.model_config(config)
  with pytest.raises(ValueError, match=r"bert/embeddings/word/embedding has shape \(300, 32\)"):
    hf_params.hf_state_dict(params, dataclasses.replace(cfg, vocab_size=512))
  with pytest.raises(ValueError, match="params have 4 layers, the config says 6"):
    hf_params.hf_state_dict(params, dataclasses.replace(cfg, num_layers=6))
  del params["mlm"]["transform_norm"]
  with pytest.raises(KeyError, match="mlm/transform_norm"):
    hf_params.hf_state_dict(params, cfg)


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_tokenizer_json_equals_sentencepiece(model_type, tmp_path):
  tokenizers = pytest.importorskip("tokenizers")
  lines = [s for d in demo_corpus.demo_documents(max_bytes=80_000) for s in d]
  text = tmp_path / "text.txt"
  text.write_text("\n".join(lines[::2]) + "\n", encoding="utf-8")
  sp = tokenizer_lib.Tokenizer(tokenizer_lib.train_tokenizer(
      str(text), 500, str(tmp_path / "sp"), model_type=model_type, num_threads=1))
  files = tokenizer_files.hf_tokenizer_files(sp.serialized_model_proto(), 128)
  hf = tokenizers.Tokenizer.from_str(json.dumps(files["tokenizer.json"]))
  for s in SENTENCES + lines[1::2]:  # held-out text
    assert hf.encode(s).ids == [sp.cls_id] + sp.encode(s) + [sp.sep_id], repr(s)


def test_sentencepiece_with_other_special_ids(tmp_path):
  """Specials found by name at other ids ([UNK] 0, [SEP] 1, [PAD] 2, [MASK] 3, [CLS] 4): the
  exported tokenizer frames and masks with those ids, and the config has [PAD]'s."""
  import sentencepiece as spm
  transformers = pytest.importorskip("transformers")
  lines = [s for d in demo_corpus.demo_documents(max_bytes=60_000) for s in d]
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(lines[::2]), model_prefix=str(tmp_path / "other"), vocab_size=400,
      unk_id=0, unk_piece="[UNK]", pad_id=-1, bos_id=-1, eos_id=-1, minloglevel=2,
      control_symbols=["[SEP]", "[PAD]", "[MASK]", "[CLS]"], num_threads=1)
  sp = tokenizer_lib.load_tokenizer(str(tmp_path / "other.model"))
  assert (sp.pad_id, sp.unk_id, sp.cls_id, sp.sep_id, sp.mask_id) == (2, 0, 4, 1, 3)
  out = tmp_path / "hf"
  out.mkdir()
  for name, obj in tokenizer_files.tokenizer_files(sp, 128).items():
    (out / name).write_text(json.dumps(obj), encoding="utf-8")
  hf = transformers.AutoTokenizer.from_pretrained(str(out))
  assert (hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id,
          hf.mask_token_id) == sp.special_ids[:1] + (0, 4, 1, 3)
  for s in SENTENCES + lines[1::2][:200]:  # held-out text
    assert hf(s)["input_ids"] == [4] + sp.encode(s) + [1], repr(s)
  assert hf("a [MASK]")["input_ids"][-2:] == [3, 1]
  cfg = BertConfig(vocab_size=400, hidden_size=32, num_layers=4, num_heads=2,
                   intermediate_size=64, max_position=128)
  assert bert_config.hf_config(cfg, sp.pad_id)["pad_token_id"] == 2


def test_unsupported_tokenizer_settings(tmp_path):
  from sentencepiece import sentencepiece_model_pb2 as pb
  text = tmp_path / "text.txt"
  text.write_text("\n".join(s for d in demo_corpus.demo_documents(max_bytes=20_000) for s in d))
  sp = tokenizer_lib.Tokenizer(tokenizer_lib.train_tokenizer(
      str(text), 100, str(tmp_path / "sp"), num_threads=1))
  m = pb.ModelProto()
  m.ParseFromString(sp.serialized_model_proto())
  m.trainer_spec.byte_fallback = True
  with pytest.raises(ValueError, match="byte_fallback"):
    tokenizer_files.hf_tokenizer_files(m.SerializeToString(), 128)
  m.trainer_spec.byte_fallback = False
  m.trainer_spec.model_type = pb.TrainerSpec.ModelType.Value("WORD")
  with pytest.raises(ValueError, match="WORD cannot be converted"):
    tokenizer_files.hf_tokenizer_files(m.SerializeToString(), 128)


# ---------------------------------------------------------------------------
# Round trip through transformers (PyTorch).


@pytest.fixture(scope="module")
def hf_model(exported):
  pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model, info = transformers.AutoModelForMaskedLM.from_pretrained(
      exported, output_loading_info=True)
  assert all(not v for v in info.values()), info  # no missing/unexpected keys
  return model.eval()


def test_mlm_logits_match_transformers(workdir, exported, hf_model):
  assert type(hf_model).__name__ == "BertForMaskedLM"
  ids, mask, types = _random_batch(hf_model.config.vocab_size)
  theirs = hf_reference.outputs(hf_model, ids, mask, types)
  ours = _our_logits(workdir, ids, mask, types)
  assert ours.shape == theirs.shape == ids.shape + (300,)
  assert np.abs(ours).max() > 1.0  # a random init that would hide errors is not enough
  np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
  # The decoder is tied to the word embeddings, as in our model.
  assert hf_model.cls.predictions.decoder.weight.data_ptr() == (
      hf_model.bert.embeddings.word_embeddings.weight.data_ptr())


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_tanh"])
def test_hidden_act_logits_match_transformers(hidden_act):
  """model.hidden_act reaches HF's config (FFN and MLM-head transform): the converted
  model gives our logits, and the other GELU would be visibly off."""
  import dataclasses
  import flax.linen as nn
  import jax
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg = BertConfig(vocab_size=300, hidden_size=32, num_layers=4, num_heads=2,
                   intermediate_size=64, max_position=32, hidden_act=hidden_act,
                   initializer_range=0.5)  # large pre-activations: the two GELUs differ
  ids, mask, types = _random_batch(cfg.vocab_size)
  positions = np.tile(np.arange(ids.shape[1]), (ids.shape[0], 1))  # every position

  def ours(c):
    model = BertForPretraining(c)
    return np.asarray(model.apply({"params": params}, ids, mask, types, positions))

  params = nn.unbox(BertForPretraining(cfg).init(jax.random.key(0), ids, mask, types,
                                                 positions)["params"])
  hf_cfg = bert_config.hf_config(cfg)
  assert hf_cfg["hidden_act"] == {"gelu": "gelu", "gelu_tanh": "gelu_new"}[hidden_act]
  hf = transformers.BertForMaskedLM(transformers.BertConfig(**hf_cfg)).eval()
  tensors = {k: torch.from_numpy(np.array(v))
             for k, v in hf_params.hf_state_dict(params, cfg).items()}
  missing, unexpected = hf.load_state_dict(tensors, strict=False)
  assert not unexpected and set(missing) <= {"cls.predictions.decoder.weight",
                                             "cls.predictions.decoder.bias"}  # tied
  theirs = hf_reference.outputs(hf, ids, mask, types)
  np.testing.assert_allclose(ours(cfg), theirs, atol=1e-4, rtol=0)
  swapped = {"gelu": "gelu_tanh", "gelu_tanh": "gelu"}[hidden_act]
  other = dataclasses.replace(cfg, hidden_act=swapped)
  assert np.abs(ours(other) - theirs).max() > 1e-3  # 10x the tolerance above


def test_auto_tokenizer_equals_ours(workdir, exported, hf_model):
  from transformers import AutoTokenizer
  hf = AutoTokenizer.from_pretrained(exported)
  ours = tokenizer_lib.Tokenizer(workdir_lib.tokenizer_path(workdir))
  assert hf.is_fast
  assert (hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id,
          hf.mask_token_id) == ours.special_ids
  for s in SENTENCES:
    ids = hf(s)["input_ids"]
    assert ids == [ours.cls_id] + ours.encode(s) + [ours.sep_id], repr(s)
    if ours.unk_id not in ids:  # SentencePiece decodes [UNK] as " ⁇ ", HF skips it
      assert hf.decode(ids, skip_special_tokens=True) == ours.decode(ids)
  pair = hf("first segment", "second one")
  a, b = ours.encode("first segment"), ours.encode("second one")
  assert pair["input_ids"] == [2] + a + [3] + b + [3]
  assert pair["token_type_ids"] == [0] * (len(a) + 2) + [1] * (len(b) + 1)
  # In HF text, "[MASK]" is the mask token (pipelines rely on it).
  assert hf("the [MASK] of")["input_ids"].count(ours.mask_id) == 1


def test_fill_mask_pipeline_runs(exported, hf_model):
  from transformers import pipeline
  fill = pipeline("fill-mask", model=exported, tokenizer=exported, device="cpu", top_k=3)
  out = fill("Return the [MASK] of items in a container.")
  assert len(out) == 3 and all(0 <= o["token"] < 300 and "sequence" in o for o in out)
  assert out[0]["score"] >= out[1]["score"] >= out[2]["score"]
