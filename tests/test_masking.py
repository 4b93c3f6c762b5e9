"""Masking options: token (unchanged), whole words, n-grams of words (data/masking.py)."""
import collections

import numpy as np
import pytest
from absl import flags

from tokendrop_jax import config_checks, config_lib
from tokendrop_jax.data import demo_corpus
from tokendrop_jax.data import masking
from tokendrop_jax.data import text_builder
from tokendrop_jax.data import tokenizer as tokenizer_lib
from tests import test_data_pipeline as tdp

flags.FLAGS.mark_as_parsed()  # grain reads absl flags

V = 1000
WORD_START = np.random.default_rng(7).random(V) < 0.55  # ~1.8 pieces a word
WORD_START[:5] = True
SPECIAL = masking.SpecialIds(V, 0, 1, 2, 3, 4, word_start=masking.pack_table(WORD_START))
IS_SPECIAL = np.arange(V) < 5


def _mask_batch_before_options(ids, rng, special, *, max_predictions, mask_prob=0.15):
  """`masking.mask_batch` as it was before the masking options (frozen copy)."""
  b, s = ids.shape
  p = max_predictions
  is_special = np.zeros((special.vocab_size,), bool)
  is_special[list(special.special_ids)] = True
  cand = ~is_special[ids]  # [B, S]
  n_cand = cand.sum(1)
  n_pred = np.minimum(np.minimum(p, np.maximum(1, np.rint(mask_prob * n_cand))), n_cand)
  keys = rng.random((b, s), dtype=np.float32)
  keys[~cand] = 2.0
  if p < s:
    top = np.argpartition(keys, p - 1, axis=1)[:, :p]
    top = np.take_along_axis(top, np.argsort(np.take_along_axis(keys, top, 1), 1), 1)
  else:
    top = np.argsort(keys, axis=1)[:, :p]
  valid = np.arange(p)[None, :] < n_pred[:, None]
  pos = np.sort(np.where(valid, top, s), axis=1)
  valid = pos < s
  pos = np.where(valid, pos, 0).astype(np.int32)
  rows = np.arange(b)[:, None]
  labels = np.where(valid, ids[rows, pos], 0).astype(np.int32)
  u = rng.random((b, p), dtype=np.float32)
  nonspecial = np.flatnonzero(~is_special)
  random_ids = nonspecial[rng.integers(0, len(nonspecial), (b, p))]
  new = np.where(u < 0.8, special.mask_id, np.where(u < 0.9, random_ids, labels))
  input_ids = ids.copy()
  input_ids[np.broadcast_to(rows, (b, p))[valid], pos[valid]] = new[valid]
  return {"input_ids": input_ids, "masked_lm_positions": pos, "masked_lm_ids": labels,
          "masked_lm_weights": valid.astype(np.float32)}


def _rows(b=3000, s=64, seed=0):
  """Packed-like rows: [CLS] ... [SEP] with a [SEP] inside some, UNKs, padding."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(5, V, (b, s)).astype(np.int32)
  n = rng.integers(4, s + 1, b)
  ids[np.arange(s)[None] >= n[:, None]] = 0
  ids[:, 0] = 2
  ids[np.arange(b), n - 1] = 3
  mid = rng.integers(1, s, b)
  inside = (mid < n - 2) & (rng.random(b) < 0.5)
  ids[np.flatnonzero(inside), mid[inside]] = 3  # two documents in one row
  ids[(rng.random((b, s)) < 0.02) & (ids >= 5)] = 1
  ids[5, 1:] = 0  # nothing to predict
  return ids


def _reference_words(row):
  """[(first, end)] token spans of the words of one row (a plain loop)."""
  out, start = [], None
  for t, i in enumerate(row):
    if IS_SPECIAL[i]:
      if start is not None:
        out.append((start, t))
      start = None
    elif start is None or WORD_START[i]:
      if start is not None:
        out.append((start, t))
      start = t
  if start is not None:
    out.append((start, len(row)))
  return out


def _chosen(out, shape):
  chosen = np.zeros(shape, bool)
  b, j = np.nonzero(out["masked_lm_weights"])
  chosen[b, out["masked_lm_positions"][b, j]] = True
  return chosen


def _mask(ids, mode, seed=1, p=12, **kw):
  return masking.mask_batch(ids, np.random.default_rng(seed), SPECIAL, max_predictions=p,
                             masking=mode, **kw)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("s,p", [(64, 12), (32, 30)])  # argpartition and argsort branches
def test_token_masking_is_bit_identical_to_before(seed, s, p):
  ids = _rows(500, s, seed)
  plain = masking.SpecialIds(V, 0, 1, 2, 3, 4)
  want = _mask_batch_before_options(ids, np.random.default_rng(seed), plain, max_predictions=p)
  for special in (plain, SPECIAL):  # a word-start table changes nothing for 'token'
    for got in (masking.mask_batch(ids, np.random.default_rng(seed), special, max_predictions=p),
                masking.mask_batch(ids, np.random.default_rng(seed), special, max_predictions=p,
                                    masking="token", max_ngram=5)):
      assert got.keys() == want.keys()
      for k in want:
        assert got[k].dtype == want[k].dtype
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_words_match_a_plain_loop():
  ids = _rows(300)
  first, end, run, count, word_of = masking.words(ids, IS_SPECIAL, WORD_START)
  for r in range(len(ids)):
    spans = _reference_words(ids[r])
    assert count[r] == len(spans)
    np.testing.assert_array_equal(first[r, :count[r]], [a for a, _ in spans])
    np.testing.assert_array_equal(end[r, :count[r]], [e for _, e in spans])
    # a run stops where a special token lies between two words
    gaps = [spans[i][1] != spans[i + 1][0] for i in range(len(spans) - 1)] + [True]
    want_run = [next(j for j in range(i, len(spans)) if gaps[j]) - i + 1
                for i in range(len(spans))]
    np.testing.assert_array_equal(run[r, :count[r]], want_run)
    for w, (a, e) in enumerate(spans):
      assert (word_of[r, a:e] == w).all()
    assert (word_of[r][IS_SPECIAL[ids[r]]] == -1).all()


@pytest.mark.parametrize("mode", ["whole_word", "ngram"])
def test_shapes_budget_specials_and_80_10_10(mode):
  b, s, p = 3000, 64, 12
  ids = _rows(b, s)
  out = _mask(ids, mode, p=p)
  assert {k: (v.shape, v.dtype.name) for k, v in out.items()} == {
      "input_ids": ((b, s), "int32"), "masked_lm_positions": ((b, p), "int32"),
      "masked_lm_ids": ((b, p), "int32"), "masked_lm_weights": ((b, p), "float32")}
  w = out["masked_lm_weights"] > 0
  pos, lab, new = out["masked_lm_positions"], out["masked_lm_ids"], out["input_ids"]
  rows = np.broadcast_to(np.arange(b)[:, None], pos.shape)
  cand = ~IS_SPECIAL[ids]
  n_pred = masking.budget(cand.sum(1), p, 0.15)
  assert (w.sum(1) <= n_pred).all()
  assert w.sum(1)[5] == 0 and (pos[~w] == 0).all() and (lab[~w] == 0).all()
  assert (w[:, :-1] >= w[:, 1:]).all()  # real predictions first
  assert (np.diff(pos, axis=1)[w[:, 1:]] > 0).all()  # ascending, no duplicates
  assert cand[rows[w], pos[w]].all()  # specials and padding never chosen
  np.testing.assert_array_equal(lab[w], ids[rows[w], pos[w]])
  selected = _chosen(out, ids.shape)
  assert not ((new != ids) & ~selected).any()
  # ~15% of the non-special tokens: the budget is the token mode's; whole units that
  # no longer fit leave a row a little short (measured ~1-2% of the budget here).
  assert w.sum() >= 0.97 * n_pred.sum()
  assert abs(w.sum() / cand.sum() - 0.15) < 0.01, w.sum() / cand.sum()
  # 80/10/10 per token: ~30,000 chosen tokens, so one standard deviation of each
  # fraction is <= 0.0023; 0.015 is over 6 of them.
  replaced = new[rows[w], pos[w]]
  assert abs(np.mean(replaced == SPECIAL.mask_id) - 0.8) < 0.015
  assert abs(np.mean(replaced == lab[w]) - 0.1) < 0.015
  assert abs(np.mean((replaced != SPECIAL.mask_id) & (replaced != lab[w])) - 0.1) < 0.015
  assert not IS_SPECIAL[replaced[replaced != SPECIAL.mask_id]].any()


@pytest.mark.parametrize("mode,max_ngram", [("whole_word", 3), ("ngram", 1), ("ngram", 3)])
def test_no_word_is_ever_partly_masked(mode, max_ngram):
  ids = _rows(1500)
  chosen = _chosen(_mask(ids, mode, max_ngram=max_ngram), ids.shape)
  partly = whole = 0
  for r in range(len(ids)):
    for a, e in _reference_words(ids[r]):
      k = chosen[r, a:e].sum()
      partly += 0 < k < e - a
      whole += k == e - a
  assert partly == 0 and whole > 1500 * 2


def test_whole_word_is_ngram_of_one():
  ids = _rows(400)
  a, b = _mask(ids, "whole_word", max_ngram=5), _mask(ids, "ngram", max_ngram=1)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def _spans(ids, n_pred, max_ngram, seed=1):
  """{(row, step): [word, ...]} from the step at which each word was taken."""
  first, _, _, _, word_of = masking.words(ids, IS_SPECIAL, WORD_START)
  step = masking.choose_spans(ids, np.random.default_rng(seed), IS_SPECIAL, WORD_START,
                              n_pred, max_ngram, steps=True)
  spans = collections.defaultdict(set)
  for r, t in zip(*np.nonzero(step)):
    spans[(r, step[r, t])].add(word_of[r, t])
  return {k: sorted(v) for k, v in spans.items()}, first


def test_ngram_spans_are_runs_of_at_most_max_ngram_words_within_a_segment():
  ids = _rows(1500)
  n_pred = masking.budget((~IS_SPECIAL[ids]).sum(1), 12, 0.15)
  spans, _ = _spans(ids, n_pred, 3)
  assert len(spans) > 1500 * 2
  for (r, _), ws in spans.items():
    assert 1 <= len(ws) <= 3 and ws == list(range(ws[0], ws[0] + len(ws)))  # consecutive
    words = _reference_words(ids[r])
    # consecutive words of one span touch: no special token between them
    assert all(words[w][1] == words[w + 1][0] for w in ws[:-1])


def test_ngram_length_draws_are_one_over_n_renormalised():
  rng = np.random.default_rng(3)
  m = 200_000  # each frequency's standard deviation is < 0.0012
  for avail in (4, 3, 2, 1):
    n = masking.ngram_lengths(rng.random(m), np.full(m, avail), 4)
    want = 1 / np.arange(1, avail + 1)
    np.testing.assert_allclose(np.bincount(n, minlength=avail + 1)[1:] / m, want / want.sum(),
                               atol=0.005)


def test_ngram_span_lengths_follow_one_over_n_roughly():
  """Long rows of one-piece words: the spans taken are 1/n, a little shorter.

  Long spans overlap taken words more often (then skipped) and are shortened at
  the end of a budget, as in the reference; measured here: 0.54/0.24/0.13/0.09
  against 0.48/0.24/0.16/0.12, over ~36,000 spans (standard deviation < 0.003).
  """
  rng = np.random.default_rng(3)
  b, s, n = 2000, 128, 4
  starts = np.flatnonzero(WORD_START[5:]) + 5
  ids = starts[rng.integers(0, len(starts), (b, s))].astype(np.int32)
  ids[:, 0], ids[:, -1] = 2, 3
  spans, _ = _spans(ids, np.full(b, 40), n)
  got = np.bincount([len(ws) for ws in spans.values()], minlength=n + 1)[1:]
  want = (1 / np.arange(1, n + 1)) / (1 / np.arange(1, n + 1)).sum()
  np.testing.assert_allclose(got / got.sum(), want, atol=0.08)
  assert got[0] > got[1] > got[2] > got[3] > 0.05 * got.sum()
  assert abs(got @ np.arange(1, n + 1) / got.sum() - want @ np.arange(1, n + 1)) < 0.25


def test_deterministic_given_the_seed():
  ids = _rows(200)
  for mode in ("whole_word", "ngram"):
    a, b, c = _mask(ids, mode, seed=4), _mask(ids, mode, seed=4), _mask(ids, mode, seed=5)
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["masked_lm_positions"], c["masked_lm_positions"])


def test_word_start_tables_of_both_tokenizer_kinds(tmp_path, spm_tok):
  table = masking.word_start_table(spm_tok)
  assert table.shape == (spm_tok.vocab_size,) and table[list(spm_tok.special_ids)].all()
  for i in range(spm_tok.vocab_size):
    if i not in spm_tok.special_ids:
      assert table[i] == spm_tok.id_to_piece(i).startswith("\u2581"), spm_tok.id_to_piece(i)
  assert 0 < table.mean() < 1
  vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(3)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]",
                                                          "play", "##ing", "##s", "the", ",", "##a"]
  (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  wp = tokenizer_lib.load_tokenizer(str(tmp_path / "vocab.txt"))
  assert wp.kind == "wordpiece"
  table = masking.word_start_table(wp)
  np.testing.assert_array_equal(table, [not p.startswith("##") for p in vocab])
  special = masking.SpecialIds.of(wp, word_starts=True)
  np.testing.assert_array_equal(special.word_starts(), table)
  assert masking.SpecialIds.of(wp).word_start is None  # read only when asked
  ids = np.array([[wp.cls_id] + [wp.piece_to_id(p) for p in
                                 ("play", "##ing", "the", "##s", ",", "play", "##s")] + [wp.sep_id]],
                 np.int32)
  first, end, _, count, _ = masking.words(ids, np.isin(np.arange(len(vocab)), wp.special_ids),
                                          table)
  assert count[0] == 4 and first[0, :4].tolist() == [1, 3, 5, 6]
  assert end[0, :4].tolist() == [3, 5, 6, 8]


def test_bad_options_name_the_field():
  docs = tdp._synthetic_docs(10)
  with pytest.raises(ValueError, match="data.masking must be one of"):
    tdp._it(docs, masking="span")
  with pytest.raises(ValueError, match="data.max_ngram must be an integer >= 1"):
    tdp._it(docs, masking="ngram", max_ngram=0)
  tdp._it(docs, masking="token", max_ngram=7)  # ignored by token masking
  plain = masking.SpecialIds(V, 0, 1, 2, 3, 4)
  with pytest.raises(ValueError, match="word starts"):
    tdp._it(docs, masking="whole_word", tokenizer=plain)
  c = config_lib.base_config()
  c.data.masking = "wwm"
  with pytest.raises(ValueError, match="data.masking"):
    config_checks.validate(c)
  c.data.masking, c.data.max_ngram = "ngram", 0
  with pytest.raises(ValueError, match="data.max_ngram"):
    config_checks.validate(c)
  c.data.masking = "token"
  config_checks.validate(c)  # max_ngram is not read by token masking


def test_resume_with_other_masking_is_refused_and_old_workdirs_resume(tmp_path):
  from tokendrop_jax.training import loop, workdir as workdir_lib
  from tests.test_config import load
  c = load("tiny")
  workdir = str(tmp_path / "run")
  workdir_lib.create(workdir)
  workdir_lib.write_config(c, workdir)
  (tmp_path / "run" / "checkpoints" / "5").mkdir(parents=True)
  check = lambda: workdir_lib.check_resume(c, workdir, loop.RESUME_FIELDS, loop.RESUME_ADDED,
                                           loop.RESUME_CANONICAL)
  check()
  saved = workdir_lib.read_json(workdir_lib.path(workdir, workdir_lib.CONFIG_FILE))
  del saved["data"]["masking"], saved["data"]["max_ngram"]  # a workdir from before the options
  workdir_lib.write_json(workdir_lib.path(workdir, workdir_lib.CONFIG_FILE), saved)
  check()
  c.data.masking = "whole_word"
  with pytest.raises(ValueError, match=r"data.masking='whole_word' but the run .* with 'token'"):
    check()


# ------------------------------------------------------- the pipeline with words ---
@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("masking_corpus")
  train, valid = demo_corpus.write_demo_corpus(str(d / "text"), max_bytes=60_000, valid_every=4)
  model = tokenizer_lib.train_tokenizer([train], 500, str(d / "spm"))
  return d, text_builder.build_corpus([train], [valid], tokenizer_lib.Tokenizer(model),
                                      str(d / "ds")), model


@pytest.fixture(scope="module")
def spm_tok(spm_dir):
  return tokenizer_lib.Tokenizer(spm_dir[2])


def test_corpus_dir_whole_word_reads_the_tokenizer_and_resumes_exactly(spm_dir, spm_tok, tmp_path):
  _, corpus_dir, _ = spm_dir
  table = masking.word_start_table(spm_tok)
  it = tdp._dir_it(corpus_dir, masking="whole_word")
  given = tdp._dir_it(corpus_dir, masking="whole_word", tokenizer=spm_tok)
  is_special = np.isin(np.arange(spm_tok.vocab_size), spm_tok.special_ids)
  for _ in range(10):
    batch, other = next(it), next(given)
    for k in batch:
      np.testing.assert_array_equal(batch[k], other[k])
    ids = tdp._originals(batch)
    chosen = _chosen(batch, ids.shape)
    _, _, _, _, word_of = masking.words(ids, is_special, table)
    for r in range(len(ids)):  # every word is all chosen or not at all
      for wid in np.unique(word_of[r][chosen[r]]):
        assert chosen[r][word_of[r] == wid].all()
  tdp._assert_orbax_resume(corpus_dir, tmp_path, n=30, masking="whole_word")


def test_in_memory_state_roundtrip_with_ngrams():
  docs = tdp._synthetic_docs(20)
  it = tdp._it(docs, tokenizer=SPECIAL, masking="ngram")
  states, batches = [], []
  for _ in range(25):
    states.append(it.get_state())
    batches.append(next(it))
  for k in (0, 9, 21):
    it2 = tdp._it(docs, tokenizer=SPECIAL, masking="ngram")
    it2.set_state(states[k])
    for j in range(k, min(k + 3, 25)):
      got = next(it2)
      for key in got:
        np.testing.assert_array_equal(got[key], batches[j][key], err_msg=f"{k} {j} {key}")
