"""GLUE task specs, TSV/TFDS readers, encoding and metrics (pure numpy, no compiles)."""
import os

import numpy as np
import pytest

from tests.test_config import load
from tokendrop_jax import config_checks
from tokendrop_jax.data import glue

SST2_DIR = "/work/shared/data/sst2"


def write(path, lines):
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(lines) + "\n")
  return str(path)


# -- metrics against hand-computed values -----------------------------------


def test_binary_metrics_by_hand():
  # tp=3 tn=3 fp=1 fn=1: acc 6/8, F1 6/8, MCC (9-1)/sqrt(4^4) = 0.5
  y, p = [1, 0, 1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0, 1, 0]
  assert glue.accuracy(y, p) == 0.75
  assert glue.f1(y, p) == pytest.approx(0.75)
  assert glue.matthews_corr(y, p) == pytest.approx(0.5)
  # tp=2 fn=1 fp=1 tn=1: F1 4/6, MCC (2-1)/sqrt(3*3*2*2) = 1/6
  y, p = [1, 1, 1, 0, 0], [1, 1, 0, 0, 1]
  assert glue.f1(y, p) == pytest.approx(2 / 3)
  assert glue.matthews_corr(y, p) == pytest.approx(1 / 6)
  assert glue.matthews_corr([1, 0, 1], [1, 1, 1]) == 0.0  # empty marginal -> 0
  assert glue.f1([0, 0], [0, 0]) == 0.0


def test_correlations_by_hand():
  # xc=[-1.5,-.5,.5,1.5], yc=[-3,-1,0,4]: 11 / sqrt(5 * 26)
  assert glue.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / np.sqrt(130))
  np.testing.assert_array_equal(glue.rank([3, 1, 3, 2]), [3.5, 1, 3.5, 2])
  # ranks [1,2.5,2.5,4] and [1,3,2,4]: 4.5 / sqrt(4.5 * 5)
  assert glue.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / np.sqrt(22.5))
  assert glue.spearman([1, 5, 2], [10, 100, 20]) == pytest.approx(1.0)
  assert glue.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_task_metrics_and_score():
  spec = glue.get_task("mrpc")
  m = glue.compute_metrics(spec, [1, 1, 1, 0, 0], [1, 1, 0, 0, 1])
  assert m == pytest.approx({"f1": 2 / 3, "accuracy": 0.6, "score": (2 / 3 + 0.6) / 2})
  stsb = glue.get_task("STS-B")
  assert stsb.is_regression and stsb.num_labels == 1
  assert set(glue.compute_metrics(stsb, [0., 1., 5.], [0.5, 1., 4.])) == {
      "pearson", "spearman", "score"}
  np.testing.assert_array_equal(
      glue.predictions_from_logits(glue.get_task("mnli"), np.array([[0, 2, 1], [3, 0, 0.]])),
      [1, 0])


def test_specs():
  assert [glue.get_task(t).num_labels for t in glue.TASKS] == [2, 2, 2, 2, 1, 3, 2, 2, 2]
  assert glue.get_task("cola").metrics == ("matthews_corr",)
  assert glue.get_task("mnli").eval_splits == ("validation_matched", "validation_mismatched")
  with pytest.raises(ValueError, match="unknown GLUE task 'squad'.*sst2"):
    glue.get_task("squad")
  assert glue.format_label(glue.get_task("rte"), 1) == "not_entailment"
  assert glue.format_label(glue.get_task("stsb"), 5.7) == "5.000"


# -- TSV readers --------------------------------------------------------------


@pytest.mark.skipif(not os.path.isdir(SST2_DIR), reason=f"{SST2_DIR} not on this machine")
def test_real_sst2_dev_header():
  ex = glue.read_tsv(os.path.join(SST2_DIR, "dev.tsv"), glue.get_task("sst2"))
  assert len(ex) == 872 and ex.text_b is None
  assert ex.labels.dtype == np.int32 and set(ex.labels.tolist()) == {0, 1}
  assert ex.text_a[0].startswith("it 's a charming") and ex.labels[0] == 1


def test_pair_task_quotes_and_string_labels(tmp_path):
  # GLUE's MNLI/RTE text holds unbalanced quotes: QUOTE_NONE keeps them verbatim.
  path = write(tmp_path / "dev.tsv", [
      "index\tsentence1\tsentence2\tlabel",
      '0\tHe said "hi.\tA "quote\tentailment',
      "1\tx\ty\tnot_entailment"])
  ex = glue.read_tsv(path, glue.get_task("rte"))
  assert ex.text_a == ['He said "hi.', "x"] and ex.text_b == ['A "quote', "y"]
  assert ex.labels.tolist() == [0, 1] and ex.index == ["0", "1"]


def test_cola_without_header_and_stsb_scores(tmp_path):
  path = write(tmp_path / "cola.tsv", ["gj04\t1\t\tThe sailors rode the breeze .",
                                       "gj04\t0\t*\tThe more we study ."])
  ex = glue.read_tsv(path, glue.get_task("cola"))
  assert ex.text_a == ["The sailors rode the breeze .", "The more we study ."]
  assert ex.labels.tolist() == [1, 0]
  path = write(tmp_path / "sts.tsv", ["index\tgenre\tsentence1\tsentence2\tscore",
                                      "0\tmain\ta\tb\t3.8", "1\tmain\tc\td\t0.0"])
  ex = glue.read_tsv(path, glue.get_task("stsb"))
  assert ex.labels.dtype == np.float32 and ex.labels.tolist() == pytest.approx([3.8, 0.0])


def test_predict_file_needs_no_labels(tmp_path):
  path = write(tmp_path / "test.tsv", ["index\tsentence", "7\tgood", "8\tbad"])
  ex = glue.read_tsv(path, glue.get_task("sst2"), require_labels=False)
  assert ex.labels is None and ex.index == ["7", "8"]
  with pytest.raises(ValueError, match=r"test\.tsv.*lacks column\(s\) \['label'\]"):
    glue.read_tsv(path, glue.get_task("sst2"))


def test_wrong_header_names_file_and_columns(tmp_path):
  path = write(tmp_path / "train.tsv", ["text\tlabel", "good\t1"])
  with pytest.raises(ValueError) as e:
    glue.read_tsv(path, glue.get_task("sst2"))
  assert path in str(e.value) and "['sentence', 'label']" in str(e.value)
  path = write(tmp_path / "mnli.tsv", ["index\tsentence1\tlabel", "0\ta\tneutral"])
  with pytest.raises(ValueError, match="lacks column.*'sentence2'"):
    glue.read_tsv(path, glue.get_task("mnli"))


@pytest.mark.parametrize("task,label", [("sst2", "2"), ("sst2", "-1"), ("mnli", "maybe"),
                                        ("stsb", "5.5"), ("stsb", "high")])
def test_bad_label_names_file_line_and_value(tmp_path, task, label):
  spec = glue.get_task(task)
  cols = list(spec.tsv_text) + [spec.tsv_label]
  good = {"sst2": "1", "mnli": "neutral", "stsb": "1.0"}[task]
  path = write(tmp_path / "d.tsv", ["\t".join(cols), "\t".join(["x"] * len(spec.tsv_text) + [good]),
                                    "\t".join(["y"] * len(spec.tsv_text) + [label])])
  with pytest.raises(ValueError) as e:
    glue.read_tsv(path, spec)
  assert f"{path}:3" in str(e.value) and repr(label) in str(e.value)


def test_ragged_row_names_line(tmp_path):
  path = write(tmp_path / "d.tsv", ["sentence\tlabel", "a\t1", "b\t0\textra"])
  with pytest.raises(ValueError, match=r"d\.tsv:3: 3 tab-separated fields"):
    glue.read_tsv(path, glue.get_task("sst2"))


def test_tfds_source_with_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
    ex = glue.read_tfds(glue.get_task("mnli"), "validation_mismatched")
    assert len(ex) == 5 and len(ex.text_b) == 5 and isinstance(ex.text_a[0], str)
    assert ex.labels.dtype == np.int32 and ex.labels.max() < 3
    ex = glue.read_tfds(glue.get_task("stsb"), "train")
    assert ex.labels.dtype == np.float32


def test_tfds_missing_dataset_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match=r"glue/rte.*--config.train_file"):
    glue.read_tfds(glue.get_task("rte"), "train", data_dir=str(tmp_path))


# -- encoding -----------------------------------------------------------------

CLS, SEP, PAD = 2, 3, 0


def test_frame_single_and_pair():
  ids, mask, types = glue.frame([10, 11], None, 6, CLS, SEP, PAD)
  assert ids.tolist() == [CLS, 10, 11, SEP, PAD, PAD] and mask.tolist() == [1, 1, 1, 1, 0, 0]
  assert types.tolist() == [0] * 6 and ids.dtype == np.int32
  ids, mask, types = glue.frame([10, 11], [20], 8, CLS, SEP, PAD)
  assert ids.tolist() == [CLS, 10, 11, SEP, 20, SEP, PAD, PAD]
  assert types.tolist() == [0, 0, 0, 0, 1, 1, 0, 0] and mask.sum() == 6


def test_truncation_trims_the_longer_side_first():
  assert glue.truncate_pair(10, 2, 8) == (6, 2)
  assert glue.truncate_pair(3, 9, 8) == (3, 5)
  assert glue.truncate_pair(9, 9, 8) == (4, 4)
  assert glue.truncate_pair(9, 8, 8) == (4, 4)
  ids, mask, types = glue.frame(list(range(10, 20)), [20, 21], 8, CLS, SEP, PAD)
  assert ids.tolist() == [CLS, 10, 11, 12, SEP, 20, 21, SEP] and mask.all()
  assert types.tolist() == [0] * 5 + [1] * 3
  ids, _, _ = glue.frame(list(range(10, 20)), None, 5, CLS, SEP, PAD)
  assert ids.tolist() == [CLS, 10, 11, 12, SEP]


class WordTokenizer:
  """Whitespace ids: enough to check encode() without a SentencePiece model."""
  cls_id, sep_id, pad_id = CLS, SEP, PAD

  def encode_batch(self, texts):
    return [[10 + len(w) for w in t.split()] for t in texts]


def test_encode_arrays():
  ex = glue.Examples(["a bb", "ccc"], ["dddd", "e"], np.array([1, 0], np.int32), ["0", "1"], "x")
  out = glue.encode(ex, WordTokenizer(), 7)
  assert set(out) == {"input_ids", "input_mask", "token_type_ids", "labels"}
  assert out["input_ids"].shape == (2, 7) and out["input_ids"].dtype == np.int32
  assert out["input_ids"][0].tolist() == [CLS, 11, 12, SEP, 14, SEP, PAD]
  assert out["token_type_ids"][1].tolist() == [0, 0, 0, 1, 1, 0, 0]


# -- config -------------------------------------------------------------------


@pytest.mark.parametrize("task", list(glue.TASKS))
def test_glue_config_variants(task):
  c = load("glue", task)
  assert c.task == task and c.data.seq_len == 128 and c.data.global_batch_size == 32
  assert c.optim.learning_rate == 3e-5 and c.train.num_epochs == 3
  assert c.optim.warmup_fraction == 0.1 and c.optim.warmup_steps == 0
  with pytest.raises(ValueError, match="init_from is required"):
    config_checks.validate(c)
  c.init_from = ""
  config_checks.validate(c)
  # The shared sections: the same fields as pretraining's.
  pre = load("tiny")
  for section in ("model", "optim", "mesh"):
    assert set(pre[section]) == set(c[section]), section
  assert set(pre.train) & set(c.train) == {"seed", "log_every", "checkpoint_every",
                                           "keep_checkpoints", "async_checkpoint", "nan_policy",
                                           "prng_impl"}
  assert set(c.train) - set(pre.train) == {"num_epochs"}  # pretraining counts steps instead


def test_glue_config_unknown_or_missing_task():
  with pytest.raises(ValueError, match="unknown GLUE task 'mnli2'"):
    load("glue", "mnli2")
  with pytest.raises(ValueError, match="needs a task"):
    load("glue")


@pytest.mark.parametrize("old,new", [("learning_rate", "optim.learning_rate"),
                                     ("max_seq_len", "data.seq_len"),
                                     ("batch_size", "data.global_batch_size"),
                                     ("adam_b1", "optim.b1"), ("num_epochs", "train.num_epochs")])
def test_glue_config_refuses_old_flat_names_naming_the_new_one(old, new):
  c = load("glue", "sst2")
  c.init_from = ""
  c[old] = 1
  with pytest.raises(ValueError, match=rf"config.{old} was renamed: set {new} instead"):
    config_checks.validate(c)


@pytest.mark.parametrize("field,value,named", [
    ("optim.warmup_fraction", 1.5, "optim.warmup_fraction"),
    ("optim.warmup_steps", 10, "optim.warmup_steps"),  # beside the default warm-up fraction
    ("optim.grad_accum_steps", 2, "optim.grad_accum_steps"),
    ("train.nan_policy", "ignore", "train.nan_policy"),
    ("train.num_epochs", 0, "train.num_epochs"),
    ("data.global_batch_size", -1, "data.global_batch_size"),
    ("data.eval_mismatched_file", "x.tsv", "data.eval_mismatched_file"),
    ("mesh.tensor", 0, "mesh.tensor"),
    ("mesh.rules", [["batch", "pod"]], "mesh.rules"),
    ("model.dropout_rate", -0.1, "model.dropout_rate"),
    ("data.bogus", 1, "data.bogus"),
])
def test_glue_config_bad_fields_are_named(field, value, named):
  c = load("glue", "sst2")
  c.init_from = ""
  section, name = field.split(".")
  c[section][name] = value
  with pytest.raises(ValueError, match=named):
    config_checks.validate(c)

