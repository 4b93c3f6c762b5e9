"""WordPiece tokenizers: training, BERT's vocab.txt at its own special ids, equality with
transformers' BertTokenizerFast, config fields, workdir files, a run and its export."""
import json
import os
import pickle

import numpy as np
import pytest
from absl import flags

from tests.test_config import load
from tokendrop_jax import config_checks, config_fields, config_lib
from tokendrop_jax import export as export_lib
from tokendrop_jax.data import demo_corpus
from tokendrop_jax.data import tokenizer as tokenizer_lib
from tokendrop_jax.data import wordpiece
from tokendrop_jax.hf import bert_config, tokenizer_files
from tokendrop_jax.training import inputs
from tokendrop_jax.training.input_settings import TokenizerSpec
from tokendrop_jax.training import workdir as workdir_lib

flags.FLAGS.mark_as_parsed()
transformers = pytest.importorskip("transformers")

BERT_SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  d = tmp_path_factory.mktemp("wp_text")
  docs = demo_corpus.demo_documents(max_bytes=150_000)
  path = d / "text.txt"
  path.write_text("\n\n".join("\n".join(doc) for doc in docs) + "\n", encoding="utf-8")
  lines = [s for doc in docs for s in doc]
  lines += ["Naïve café RÉSUMÉ: 東京 über-fast don't", "x" * 150, "tab\there  two"]
  return str(path), lines


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def trained(request, corpus, tmp_path_factory):
  lowercase = request.param
  d = tmp_path_factory.mktemp("wp_vocab")
  path = wordpiece.train_wordpiece([corpus[0]], 700, str(d / "vocab.txt"), lowercase=lowercase)
  return path, lowercase


def bert_layout(vocab_txt: str, out: str) -> str:
  """The vocabulary reordered as BERT's: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103."""
  pieces = open(vocab_txt, encoding="utf-8").read().split("\n")[:-1]
  rest = [p for p in pieces if p not in BERT_SPECIALS]
  out_pieces = ["[PAD]"] + rest[:99] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + rest[99:]
  with open(out, "w", encoding="utf-8") as f:
    f.write("".join(p + "\n" for p in out_pieces))
  return out


def test_trained_vocab_equals_bert_tokenizer_fast(trained, corpus, tmp_path):
  path, lowercase = trained
  pieces = open(path, encoding="utf-8").read().split("\n")[:-1]
  assert len(pieces) == 700 and pieces[:5] == list(tokenizer_lib.SPECIAL_PIECES)
  again = wordpiece.train_wordpiece([corpus[0]], 700, str(tmp_path / "again.txt"),
                                        lowercase=lowercase)
  assert open(again, "rb").read() == open(path, "rb").read()  # deterministic
  tok = tokenizer_lib.load_tokenizer(path)  # lowercase inferred from the pieces
  assert tok.kind == "wordpiece" and tok.lowercase == lowercase and tok.vocab_size == 700
  assert tok.special_ids == (0, 1, 2, 3, 4)
  hf = transformers.BertTokenizerFast(vocab_file=path, do_lower_case=lowercase)
  lines = corpus[1]
  ours = tok.encode_batch(lines)
  assert ours == hf(lines, add_special_tokens=False)["input_ids"]
  assert [tok.encode(s) for s in lines[:50]] == ours[:50]
  assert sum(map(len, ours)) > 10 * len(lines)  # real text, not all [UNK]
  # "[MASK]" in text is three pieces, never the mask (the specials are not added tokens),
  # where HF's fast class matches it as the special token: the one intended difference.
  assert tok.encode("the [MASK] token") == tok.encode("the [ MASK ] token")
  assert tok.mask_id not in tok.encode("the [MASK] token")
  assert hf("[MASK]", add_special_tokens=False)["input_ids"] == [tok.mask_id]
  # The saved tokenizer.json and a pickled copy encode the same.
  saved = tok.save(str(tmp_path / "tokenizer.json"))
  for other in (tokenizer_lib.load_tokenizer(saved), pickle.loads(pickle.dumps(tok))):
    assert other.encode_batch(lines) == ours and other.lowercase == lowercase
  assert tok.vocab_txt() == open(path, encoding="utf-8").read()
  assert tok.decode(tok.encode("the value of the")) == "the value of the"
  starts = [tok.is_word_start(tok.id_to_piece(i)) for i in tok.encode("returned values")]
  assert starts[0] and starts.count(True) == 2


def test_bert_layout_specials_and_refusals(trained, corpus, tmp_path):
  path, lowercase = trained
  bert = bert_layout(path, str(tmp_path / "vocab.txt"))
  tok = tokenizer_lib.load_tokenizer(bert, lowercase)
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 100, 101, 102, 103)
  assert tok.piece_to_id("[MASK]") == 103 and tok.id_to_piece(101) == "[CLS]"
  hf = transformers.BertTokenizerFast(vocab_file=bert, do_lower_case=lowercase)
  lines = corpus[1][:300]
  assert tok.encode_batch(lines) == hf(lines, add_special_tokens=False)["input_ids"]
  pieces = open(bert, encoding="utf-8").read().split("\n")[:-1]
  no_mask = tmp_path / "no_mask.txt"
  no_mask.write_text("".join(p + "\n" for p in pieces if p != "[MASK]"), encoding="utf-8")
  with pytest.raises(ValueError, match=r"no_mask.txt: the special token \[MASK\] is missing"):
    tokenizer_lib.load_tokenizer(str(no_mask))
  twice = tmp_path / "twice.txt"
  twice.write_text("".join(p + "\n" for p in pieces + ["the"]), encoding="utf-8")
  with pytest.raises(ValueError, match=r"twice.txt: the piece 'the' appears twice"):
    tokenizer_lib.load_tokenizer(str(twice))
  with pytest.raises(FileNotFoundError, match="absent.txt"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "absent.txt"))
  saved = tok.save(str(tmp_path / "tokenizer.json"))
  with pytest.raises(ValueError, match=rf"lowercase={not lowercase} conflicts"):
    tokenizer_lib.load_tokenizer(saved, not lowercase)
  spec = json.loads(open(saved).read())
  spec["model"]["type"] = "BPE"
  (tmp_path / "bpe.json").write_text(json.dumps(spec))
  with pytest.raises(ValueError, match=r"bpe.json: not a WordPiece tokenizer"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "bpe.json"))


def test_export_files_load_in_transformers(trained, corpus, tmp_path):
  """BERT's layout exported: AutoTokenizer gives a BertTokenizerFast with our ids,
  [CLS] A [SEP] framing, "[MASK]" in text as the mask, and the real pad id."""
  path, lowercase = trained
  tok = tokenizer_lib.load_tokenizer(bert_layout(path, str(tmp_path / "vocab.txt")))
  out = tmp_path / "hf"
  out.mkdir()
  for name, obj in tokenizer_files.tokenizer_files(tok, 64).items():
    (out / name).write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
  hf = transformers.AutoTokenizer.from_pretrained(str(out))
  assert type(hf).__name__ == "BertTokenizerFast" and hf.do_lower_case == lowercase
  assert (hf.pad_token_id, hf.unk_token_id, hf.cls_token_id, hf.sep_token_id,
          hf.mask_token_id) == (0, 100, 101, 102, 103)
  lines = corpus[1][:300]
  want = [[101] + ids + [102] for ids in tok.encode_batch(lines)]
  assert hf(lines)["input_ids"] == want
  assert hf("a [MASK] b")["input_ids"] == [101, *tok.encode("a"), 103, *tok.encode("b"), 102]
  assert (out / "vocab.txt").read_text(encoding="utf-8") == tok.vocab_txt()
  cfg = bert_config.hf_config(config_lib.model_config(load("tiny")), tok.pad_id)
  assert cfg["pad_token_id"] == 0
  assert bert_config.hf_config(config_lib.model_config(load("tiny")), 7)["pad_token_id"] == 7


@pytest.mark.parametrize("fields, match", [
    (dict(tokenizer_type="sentencepiece"), r"data.tokenizer_type must be one of"),
    (dict(lowercase="yes"), r"data.lowercase must be True, False or 'auto', got 'yes'"),
    (dict(lowercase=True), r"data.lowercase=True is for WordPiece .* "
                           r"data.tokenizer_type='unigram'"),
    (dict(lowercase=False, tokenizer_model="/x/tok.model"), r"data.lowercase=False is for "
                                                            r"WordPiece .*tok.model"),
    (dict(tokenizer_model="/x/vocab.bin"), r"data.tokenizer_model='/x/vocab.bin': expected"),
])
def test_config_fields_are_checked(fields, match):
  c = load("tiny")
  c.data.update(**fields)
  with pytest.raises(ValueError, match=match):
    config_checks.validate(c)


def test_config_fields_accepted():
  c = load("tiny")
  c.data.update(tokenizer_type="wordpiece", lowercase=False)
  config_checks.validate(c)
  c.data.update(tokenizer_type="unigram", tokenizer_model="/x/vocab.txt", lowercase=None)
  config_checks.validate(c)
  assert [config_fields.lowercase_option(v) for v in ("auto", None, True, False)] == [
      None, None, True, False]


def test_workdir_finds_the_tokenizer_and_a_vocab_becomes_tokenizer_json(trained, tmp_path):
  path, lowercase = trained
  c = load("tiny")
  c.model.vocab_size = 700
  c.data.update(tokenizer_model=bert_layout(path, str(tmp_path / "vocab.txt")),
                lowercase=lowercase)
  w = tmp_path / "w"
  w.mkdir()
  with pytest.raises(FileNotFoundError, match=r"No tokenizer at .*tokenizer.model"):
    workdir_lib.tokenizer_path(str(w))
  # A given tokenizer: nothing to train.
  tok = inputs.ensure_tokenizer(TokenizerSpec.of(c), str(w), source=None, corpus_dir="")
  assert os.listdir(w) == ["tokenizer.json"]
  assert workdir_lib.tokenizer_path(str(w)) == str(w / "tokenizer.json")
  assert tok.special_ids == (0, 100, 101, 102, 103) and tok.lowercase == lowercase
  again = tokenizer_lib.load_tokenizer(str(w / "tokenizer.json"))
  assert again.vocab_txt() == tok.vocab_txt() and again.lowercase == lowercase
  (w / "tokenizer.model").write_bytes(b"")
  with pytest.raises(ValueError, match="holds both tokenizer.model and tokenizer.json"):
    workdir_lib.tokenizer_path(str(w))
  c.model.vocab_size = 800
  os.remove(w / "tokenizer.model")
  with pytest.raises(ValueError, match=r"model.vocab_size=800 but the tokenizer .* 700 pieces"):
    inputs.ensure_tokenizer(TokenizerSpec.of(c), str(w), source=None, corpus_dir="")


@pytest.mark.slow
def test_pretrain_with_a_trained_wordpiece_and_export(tmp_path):
  """`data.tokenizer_type='wordpiece'` end to end: trained into the workdir as
  tokenizer.json, pretrained a few steps, exported; transformers reads the export
  and tokenizes as we do."""
  from tokendrop_jax.training import loop  # pylint: disable=g-import-not-at-top
  c = load("tiny")
  c.data.update(tokenizer_type="wordpiece")
  c.train.update(num_steps=4, log_every=2, eval_every=4, eval_batches=1, checkpoint_every=4)
  workdir = str(tmp_path / "run")
  summary = loop.train_and_evaluate(c, workdir)
  assert summary["step"] == 4 and np.isfinite(summary["eval/loss"])
  assert workdir_lib.tokenizer_path(workdir) == os.path.join(workdir, "tokenizer.json")
  assert not os.path.exists(os.path.join(workdir, "tokenizer.model"))
  tok = tokenizer_lib.load_tokenizer(workdir_lib.tokenizer_path(workdir))
  assert tok.kind == "wordpiece" and tok.lowercase and tok.vocab_size == 1000
  out = export_lib.export(workdir, str(tmp_path / "hf"))
  hf = transformers.AutoTokenizer.from_pretrained(out)
  assert type(hf).__name__ == "BertTokenizerFast" and hf.do_lower_case
  with open(os.path.join(workdir, "corpus", "valid.txt"), encoding="utf-8") as f:
    lines = [s.strip() for s in f if s.strip()][:200]
  assert hf(lines)["input_ids"] == [[tok.cls_id, *ids, tok.sep_id]
                                    for ids in tok.encode_batch(lines)]
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["pad_token_id"] == tok.pad_id
  model = transformers.AutoModelForMaskedLM.from_pretrained(out)
  assert model.config.vocab_size == tok.vocab_size


@pytest.mark.parametrize("which", ["pretrain", "finetune"])
def test_workdirs_from_before_data_lowercase_still_resume(which, tmp_path):
  """A config.json without data.lowercase was 'auto' (None the same); another value is refused."""
  from tokendrop_jax.training import finetune_loop, loop  # pylint: disable=g-import-not-at-top
  mod = loop if which == "pretrain" else finetune_loop
  c = load("tiny") if which == "pretrain" else config_lib.glue_config("sst2")
  (tmp_path / "checkpoints" / "10").mkdir(parents=True)
  saved = json.loads(c.to_json_best_effort())
  del saved["data"]["lowercase"]
  (tmp_path / "config.json").write_text(json.dumps(saved))

  def check():
    workdir_lib.check_resume(c, str(tmp_path), mod.RESUME_FIELDS, mod.RESUME_ADDED,
                             mod.RESUME_CANONICAL)

  check()
  c.data.lowercase = None
  check()
  c.data.lowercase = True
  with pytest.raises(ValueError, match=r"data.lowercase=True but the run .* started with 'auto'"):
    check()
