"""SentencePiece tokenizer: special ids (ours 0..4, or any found by name), loading checks,
bad input. WordPiece: tests/test_wordpiece.py."""
import gzip
import os
import pickle

import pytest
import sentencepiece as spm

from tokendrop_jax.data import demo_corpus
from tokendrop_jax.data import tokenizer as tokenizer_lib


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
  d = tmp_path_factory.mktemp("tok_text")
  docs = demo_corpus.demo_documents(max_bytes=150_000)
  path = d / "text.txt"
  path.write_text("\n\n".join("\n".join(doc) for doc in docs) + "\n", encoding="utf-8")
  return str(path)


@pytest.fixture(scope="module")
def tok(text_file, tmp_path_factory):
  prefix = str(tmp_path_factory.mktemp("tok_model") / "spm")
  return tokenizer_lib.Tokenizer(tokenizer_lib.train_tokenizer([text_file], 600, prefix))


def test_special_ids_fixed(tok):
  assert tok.vocab_size == 600
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
  assert tok.special_ids == (0, 1, 2, 3, 4)
  assert [tok.id_to_piece(i) for i in tok.special_ids] == list(tokenizer_lib.SPECIAL_PIECES)


def test_encode_never_produces_control_specials(tok):
  ids = tok.encode("Return [MASK] the [CLS] value [SEP] of [PAD] x.")
  assert ids and not {tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id} & set(ids)
  assert tok.decode(tok.encode("Return the value.")) == "Return the value."
  assert tok.encode_batch(["a b", "Return the value."]) == [tok.encode("a b"),
                                                            tok.encode("Return the value.")]


def test_pickle_and_serialized_proto(tok, tmp_path):
  tok2 = pickle.loads(pickle.dumps(tok))
  assert tok2.encode("The value of x.") == tok.encode("The value of x.")
  path = tmp_path / "copy.model"
  path.write_bytes(tok.serialized_model_proto())
  assert tokenizer_lib.Tokenizer(str(path)).vocab_size == tok.vocab_size


def test_bpe_gzip_and_glob(text_file, tmp_path):
  gz = tmp_path / "part1.txt.gz"
  with open(text_file, "rb") as f, gzip.open(gz, "wb") as g:
    g.write(f.read())
  path = tokenizer_lib.train_tokenizer([str(tmp_path / "*.txt.gz")], 500, str(tmp_path / "bpe"),
                                       model_type="bpe")
  assert tokenizer_lib.Tokenizer(path).special_ids == (0, 1, 2, 3, 4)


def test_missing_file(tmp_path):
  missing = str(tmp_path / "nope.txt")
  with pytest.raises(FileNotFoundError, match="nope.txt"):
    tokenizer_lib.train_tokenizer([missing], 500, str(tmp_path / "m"))
  with pytest.raises(FileNotFoundError, match=r"\*.txt"):
    tokenizer_lib.train_tokenizer([str(tmp_path / "*.txt")], 500, str(tmp_path / "m"))
  assert not os.listdir(tmp_path)


def test_empty_corpus(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("\n   \n\n")
  with pytest.raises(ValueError, match="empty corpus.*empty.txt"):
    tokenizer_lib.train_tokenizer([str(empty)], 500, str(tmp_path / "m"))
  assert sorted(os.listdir(tmp_path)) == ["empty.txt"]


def test_non_utf8(text_file, tmp_path):
  bad = tmp_path / "latin1.txt"
  bad.write_bytes("Caf\u00e9 au lait is nice.\n".encode("latin-1"))
  with pytest.raises(ValueError, match="latin1.txt.*UTF-8"):
    tokenizer_lib.train_tokenizer([text_file, str(bad)], 500, str(tmp_path / "m"))
  assert sorted(os.listdir(tmp_path)) == ["latin1.txt"]


def test_model_without_bert_specials(text_file, tmp_path):
  prefix = str(tmp_path / "plain")
  with open(text_file) as f:
    spm.SentencePieceTrainer.train(sentence_iterator=iter(f.readlines()), model_prefix=prefix,
                                   vocab_size=500, minloglevel=2)
  with pytest.raises(ValueError, match=r"plain.model: the special token \[PAD\] is missing"):
    tokenizer_lib.Tokenizer(prefix + ".model")
  with pytest.raises(FileNotFoundError, match="absent.model"):
    tokenizer_lib.Tokenizer(str(tmp_path / "absent.model"))
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(ValueError, match="junk.model"):
    tokenizer_lib.Tokenizer(str(tmp_path / "junk.model"))


def _spm(text_file, prefix, **specials):
  with open(text_file) as f:
    spm.SentencePieceTrainer.train(sentence_iterator=iter(f.readlines()), model_prefix=prefix,
                                   vocab_size=500, minloglevel=2, bos_id=-1, eos_id=-1,
                                   **specials)
  return prefix + ".model"


def test_specials_at_other_ids(text_file, tmp_path):
  """A SentencePiece model of someone else's layout: the specials are found by name."""
  path = _spm(text_file, str(tmp_path / "other"), unk_id=0, unk_piece="[UNK]", pad_id=-1,
              control_symbols=["[SEP]", "[PAD]", "[MASK]", "[CLS]"])
  tok = tokenizer_lib.load_tokenizer(path)
  assert tok.kind == "sentencepiece" and tok.file_name == "tokenizer.model"
  assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (2, 0, 4, 1, 3)
  assert tok.special_ids == (2, 0, 4, 1, 3)
  assert [tok.id_to_piece(i) for i in tok.special_ids] == list(tokenizer_lib.SPECIAL_PIECES)
  ids = tok.encode("Return [MASK] the [CLS] value [SEP] of [PAD] x.")
  assert ids and not {tok.cls_id, tok.sep_id, tok.mask_id, tok.pad_id} & set(ids)
  again = pickle.loads(pickle.dumps(tok))
  assert again.special_ids == tok.special_ids and again.serialized() == tok.serialized()
  assert tok.serialized() == open(path, "rb").read()


def test_specials_must_be_control_symbols(text_file, tmp_path):
  """A user-defined [MASK] would be produced from text: refused, naming file and token."""
  path = _spm(text_file, str(tmp_path / "user"), unk_id=0, unk_piece="[UNK]", pad_id=1,
              pad_piece="[PAD]", control_symbols=["[CLS]", "[SEP]"], user_defined_symbols=["[MASK]"])
  with pytest.raises(ValueError, match=r"user.model: the special token \[MASK\] \(id 4\) is "
                                       "not a control symbol"):
    tokenizer_lib.Tokenizer(path)


def test_load_tokenizer_dispatch(tok, tmp_path):
  assert tokenizer_lib.load_tokenizer(tok.model_path).special_ids == (0, 1, 2, 3, 4)
  with pytest.raises(ValueError, match="lowercase=True is for WordPiece"):
    tokenizer_lib.load_tokenizer(tok.model_path, lowercase=True)
  with pytest.raises(ValueError, match=r"tok.bin: unknown tokenizer file"):
    tokenizer_lib.load_tokenizer(str(tmp_path / "tok.bin"))
  assert tokenizer_lib.is_word_start("\u2581the", "sentencepiece")
  assert not tokenizer_lib.is_word_start("the", "sentencepiece")
  assert tok.is_word_start(tok.id_to_piece(tok.encode("the")[0]))


def test_a_corpus_too_small_for_the_vocab_names_the_field(tmp_path):
  """sentencepiece's own words ('Vocabulary size too high (1000) ... <= 22') become the
  config field and the largest size this text allows."""
  path = tmp_path / "small.txt"
  path.write_text("hello world\nthe cat sat on the mat\n" * 50)
  with pytest.raises(ValueError, match=r"model.vocab_size=1000: the text in .*small.txt gives a "
                                       r"unigram tokenizer at most \d+ pieces; set "
                                       r"--config.model.vocab_size=\d+ or less"):
    tokenizer_lib.train_tokenizer(str(path), 1000, str(tmp_path / "m"))
