"""grain pipeline: packing, masking, sharding, exact resume (in memory and via orbax)."""
import collections

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags

from tokendrop_jax.data import demo_corpus
from tokendrop_jax.data import masking
from tokendrop_jax.data import pipeline
from tokendrop_jax.data import text_builder
from tokendrop_jax.data import tokenizer as tokenizer_lib

flags.FLAGS.mark_as_parsed()  # grain reads absl flags

SPECIAL = masking.SpecialIds(vocab_size=1000, pad_id=0, unk_id=1, cls_id=2, sep_id=3, mask_id=4)
N_DOCS = 120
S = 64  # seq_len of most tests; cap = 62 content tokens per row


def _synthetic_docs(n_docs=N_DOCS, seed=0):
  """Docs whose first token (5 + doc index) identifies them; some sentences > S - 2."""
  rng = np.random.default_rng(seed)
  docs = []
  for d in range(n_docs):
    lengths = rng.integers(1, 30, rng.integers(1, 8))
    if d % 17 == 3:
      lengths[rng.integers(len(lengths))] = 150  # longer than a row
    ids = rng.integers(200, SPECIAL.vocab_size, lengths.sum()).astype(np.int32)
    ids[0] = 5 + d
    if d % 5 == 0:
      ids[-1] = SPECIAL.unk_id  # an UNK inside the text: never masked
    docs.append({"ids": ids, "sentence_lengths": lengths.astype(np.int32)})
  return docs


@pytest.fixture(scope="module")
def docs():
  return _synthetic_docs()


def _originals(batch):
  """input_ids with the masked positions put back -> the packed rows int32[B, S]."""
  ids = batch["input_ids"].copy()
  b, p = np.nonzero(batch["masked_lm_weights"])
  ids[b, batch["masked_lm_positions"][b, p]] = batch["masked_lm_ids"][b, p]
  return ids


def _rows(batches):
  rows = []
  for batch in batches:
    orig = _originals(batch)
    for r in range(len(orig)):
      n = int(batch["input_mask"][r].sum())
      if n:
        rows.append(orig[r, :n])
  return rows


def _it(docs, **kw):
  args = dict(split="train", seq_len=S, max_predictions_per_seq=10, global_batch_size=4,
              tokenizer=SPECIAL, seed=3, shard_index=0, num_shards=1)
  args.update(kw)
  return pipeline.make_pretrain_iterator(docs, **args)


def test_batch_shapes_and_structure(docs):
  it = _it(docs)
  for _ in range(5):
    batch = next(it)
    assert {k: (v.shape, v.dtype.name) for k, v in batch.items()} == {
        "input_ids": ((4, S), "int32"), "input_mask": ((4, S), "int32"),
        "token_type_ids": ((4, S), "int32"), "masked_lm_positions": ((4, 10), "int32"),
        "masked_lm_ids": ((4, 10), "int32"), "masked_lm_weights": ((4, 10), "float32")}
    assert (batch["token_type_ids"] == 0).all()
    n = batch["input_mask"].sum(1)
    assert (batch["input_ids"][:, 0] == SPECIAL.cls_id).all()
    assert (batch["input_ids"][np.arange(4), n - 1] == SPECIAL.sep_id).all()
    assert (batch["input_ids"][batch["input_mask"] == 0] == SPECIAL.pad_id).all()
    pad_slots = batch["masked_lm_weights"] == 0
    assert (batch["masked_lm_positions"][pad_slots] == 0).all()
    assert (batch["masked_lm_ids"][pad_slots] == 0).all()


def test_packing_full_sentences_no_loss(docs):
  """One ordered pass: rows are exactly [CLS] stream[a:b] (+[SEP] at doc starts) [SEP]."""
  it = pipeline.make_eval_iterator(docs, split="validation", seq_len=S,
                                   max_predictions_per_seq=10, global_batch_size=4,
                                   tokenizer=SPECIAL, shard_index=0, num_shards=1)
  rows = _rows(list(it))
  stream = np.concatenate([d["ids"] for d in docs])
  lengths = np.concatenate([d["sentence_lengths"] for d in docs])
  sent_starts = np.concatenate([[0], np.cumsum(lengths)])
  sent_len_at = np.repeat(lengths, lengths)  # length of the sentence holding each token
  doc_starts = set(np.cumsum([0] + [len(d["ids"]) for d in docs]).tolist())
  cap = S - 2
  a = 0
  for i, row in enumerate(rows):
    content = row[1:-1][row[1:-1] != SPECIAL.sep_id]
    b = a + len(content)
    want = [SPECIAL.cls_id]
    for t in range(a, b):
      if t in doc_starts and t != a:
        want.append(SPECIAL.sep_id)
      want.append(stream[t])
    want.append(SPECIAL.sep_id)
    np.testing.assert_array_equal(row, want)
    if b < len(stream):  # a row ends between sentences unless one is longer than a row
      assert b in set(sent_starts.tolist()) or sent_len_at[b] > cap, (i, a, b)
      if b in set(sent_starts.tolist()) and sent_len_at[b] <= cap:  # ...and only when full
        assert len(row) - 2 + (1 if b in doc_starts else 0) + sent_len_at[b] > cap
    a = b
  assert a == len(stream)  # no token lost or duplicated


def test_shuffled_epoch_counts(docs):
  it = _it(docs, global_batch_size=1, num_epochs=1)
  rows = _rows(list(it))
  got = np.concatenate([r[1:-1][r[1:-1] != SPECIAL.sep_id] for r in rows])
  want = np.concatenate([d["ids"] for d in docs])
  np.testing.assert_array_equal(np.bincount(got, minlength=1000), np.bincount(want, minlength=1000))
  first_docs = [int(r[1]) - 5 for r in rows[:5]]
  assert first_docs != sorted(first_docs)  # shuffled


def test_two_shards_disjoint_and_cover(docs):
  seen, tokens = [], []
  for p in range(2):
    it = _it(docs, global_batch_size=2, num_epochs=1, shard_index=p, num_shards=2)
    rows = _rows(list(it))
    content = np.concatenate([r[1:-1][r[1:-1] != SPECIAL.sep_id] for r in rows])
    seen.append({int(t) - 5 for t in content if 5 <= t < 5 + N_DOCS})
    tokens.append(content)
  assert not seen[0] & seen[1]
  assert seen[0] | seen[1] == set(range(N_DOCS))
  want = np.concatenate([d["ids"] for d in docs])
  np.testing.assert_array_equal(np.bincount(np.concatenate(tokens), minlength=1000),
                                np.bincount(want, minlength=1000))


def test_mask_batch_rules():
  rng = np.random.default_rng(0)
  b, s, p = 4000, 64, 12
  ids = rng.integers(5, 1000, (b, s)).astype(np.int32)
  n = rng.integers(3, s + 1, b)
  ids[np.arange(s)[None] >= n[:, None]] = SPECIAL.pad_id
  ids[:, 0] = SPECIAL.cls_id
  ids[np.arange(b), n - 1] = SPECIAL.sep_id
  ids[rng.random((b, s)) < 0.02] = SPECIAL.unk_id
  ids[5, 1:] = SPECIAL.pad_id  # a row without any maskable token
  out = masking.mask_batch(ids, np.random.default_rng(1), SPECIAL, max_predictions=p)
  w = out["masked_lm_weights"] > 0
  cand = ids >= 5
  n_cand = cand.sum(1)
  np.testing.assert_array_equal(
      w.sum(1), np.minimum(np.minimum(p, np.maximum(1, np.rint(0.15 * n_cand))), n_cand))
  pos, lab, new = out["masked_lm_positions"], out["masked_lm_ids"], out["input_ids"]
  rows = np.broadcast_to(np.arange(b)[:, None], pos.shape)
  assert cand[rows[w], pos[w]].all()  # specials and padding never selected
  np.testing.assert_array_equal(lab[w], ids[rows[w], pos[w]])
  assert (np.diff(pos, axis=1)[w[:, 1:]] > 0).all()  # sorted, no duplicates
  changed = new != ids
  selected = np.zeros_like(cand)
  selected[rows[w], pos[w]] = True
  assert not (changed & ~selected).any()
  replaced = new[rows[w], pos[w]]
  frac_mask = np.mean(replaced == SPECIAL.mask_id)
  frac_same = np.mean(replaced == lab[w])
  frac_rand = np.mean((replaced != SPECIAL.mask_id) & (replaced != lab[w]))
  assert abs(frac_mask - 0.8) < 0.015 and abs(frac_same - 0.1) < 0.015
  assert abs(frac_rand - 0.1) < 0.015
  assert (replaced[replaced != SPECIAL.mask_id] >= 5).all()  # random ones never special


def test_masking_statistics_over_stream(docs):
  it = _it(docs, global_batch_size=8)
  sel = cand = 0
  kinds = collections.Counter()
  for _ in range(150):
    batch = next(it)
    orig = _originals(batch)
    w = batch["masked_lm_weights"] > 0
    cand += int((orig >= 5).sum())
    sel += int(w.sum())
    rows = np.broadcast_to(np.arange(8)[:, None], w.shape)
    got = batch["input_ids"][rows[w], batch["masked_lm_positions"][w]]
    lab = batch["masked_lm_ids"][w]
    assert (lab >= 5).all()
    kinds.update(np.where(got == SPECIAL.mask_id, "mask", np.where(got == lab, "same", "rand")))
  assert abs(sel / cand - 0.15) < 0.01, sel / cand
  total = sum(kinds.values())
  assert abs(kinds["mask"] / total - 0.8) < 0.02 and abs(kinds["rand"] / total - 0.1) < 0.02


def test_state_roundtrip_in_memory(docs):
  """Restoring any saved state continues exactly, across epochs and long sentences."""
  small = docs[:20]
  it = _it(small)
  states, batches = [], []
  for _ in range(40):  # several epochs of 20 docs
    states.append(it.get_state())
    batches.append(next(it))
  for k in (0, 1, 7, 19, 33):
    it2 = _it(small)
    it2.set_state(states[k])
    for j in range(k, min(k + 4, 40)):
      got = next(it2)
      for key in got:
        np.testing.assert_array_equal(got[key], batches[j][key], err_msg=f"{k} {j} {key}")


def test_eval_iterator_pads_and_is_deterministic(docs):
  kw = dict(seq_len=S, max_predictions_per_seq=10, global_batch_size=8, tokenizer=SPECIAL,
            shard_index=0, num_shards=1)
  a = list(pipeline.make_eval_iterator(docs, **kw))
  b = list(pipeline.make_eval_iterator(docs, **kw))
  assert len(a) == len(b) > 2
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  last = a[-1]
  empty = last["input_mask"].sum(1) == 0
  assert empty.any()  # this corpus does not fill the last batch
  assert (last["masked_lm_weights"][empty] == 0).all()
  assert (last["input_ids"][empty] == SPECIAL.pad_id).all()
  fixed = list(pipeline.make_eval_iterator(docs, num_batches=len(a) + 2, **kw))
  assert len(fixed) == len(a) + 2 and fixed[-1]["input_mask"].sum() == 0
  assert len(list(pipeline.make_eval_iterator(docs, num_batches=1, **kw))) == 1


def test_bad_arguments(docs, tmp_path):
  with pytest.raises(ValueError, match="seq_len must be >= 8"):
    _it(docs, seq_len=7, max_predictions_per_seq=2)
  with pytest.raises(ValueError, match="global_batch_size 3.*num_shards 2"):
    _it(docs, global_batch_size=3, num_shards=2)
  with pytest.raises(ValueError, match="max_predictions_per_seq"):
    _it(docs, max_predictions_per_seq=S)
  with pytest.raises(ValueError, match="tokenizer"):
    _it(docs, tokenizer=None)
  bad = [{"ids": np.arange(5, 10, dtype=np.int32), "sentence_lengths": np.array([2, 2])}]
  with pytest.raises(ValueError, match="sentence_lengths"):
    next(_it(bad, global_batch_size=1))
  with pytest.raises(FileNotFoundError, match="not a corpus"):
    _it(str(tmp_path), tokenizer=None)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("pipe_corpus")
  train, valid = demo_corpus.write_demo_corpus(str(d / "text"), max_bytes=60_000, valid_every=4)
  tok = tokenizer_lib.train_tokenizer([train], 500, str(d / "spm"))
  return text_builder.build_corpus([train], [valid], tokenizer_lib.Tokenizer(tok), str(d / "ds"))


def _dir_it(corpus_dir, **kw):
  args = dict(seq_len=S, max_predictions_per_seq=10, global_batch_size=4, seed=11,
              shard_index=0, num_shards=1)
  args.update(kw)
  return pipeline.make_pretrain_iterator(corpus_dir, **args)


def _assert_orbax_resume(corpus_dir, tmp_path, n, **kw):
  it = _dir_it(corpus_dir, **kw)
  for _ in range(n):
    next(it)
  state = {"w": np.arange(6.0)}
  with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
    mngr.save(n, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                         data=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
  want = [next(it) for _ in range(3)]
  fresh = _dir_it(corpus_dir, **kw)
  with ocp.CheckpointManager(str(tmp_path / "ckpt")) as mngr:
    restored = mngr.restore(n, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(state), data=grain.checkpoint.CheckpointRestore(fresh)))
  np.testing.assert_array_equal(restored["state"]["w"], state["w"])
  for w in want:
    got = next(fresh)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k], err_msg=k)


def test_orbax_resume_exact(corpus_dir, tmp_path):
  _assert_orbax_resume(corpus_dir, tmp_path, n=30)  # > one epoch of this small corpus


def test_corpus_dir_reads_special_ids_from_meta(corpus_dir):
  batch = next(_dir_it(corpus_dir))
  assert batch["input_ids"].max() < 500 and (batch["input_ids"][:, 0] == 2).all()
  ev = list(pipeline.make_eval_iterator(corpus_dir, seq_len=S, max_predictions_per_seq=10,
                                        global_batch_size=4, shard_index=0, num_shards=1))
  meta = text_builder.load_corpus_meta(corpus_dir)
  content = sum(int(((b["input_mask"] == 1) & (_originals(b) >= 5)).sum()) for b in ev)
  assert content == meta["splits"]["validation"]["tokens"] - sum(
      int((_originals(b) == 1).sum()) for b in ev)  # every validation token but UNKs


@pytest.mark.slow
def test_orbax_resume_exact_with_workers(corpus_dir, tmp_path):
  _assert_orbax_resume(corpus_dir, tmp_path, n=12, worker_count=2)


def test_orbax_resume_exact_with_prefetch(corpus_dir, tmp_path):
  _assert_orbax_resume(corpus_dir, tmp_path, n=9, prefetch_batches=2)


def test_worker_slice_changes_docs_and_masks(docs):
  """grain calls set_slice in each worker: it reads its slice and draws its own masks."""
  def build():
    d = pipeline._documents(docs, shard_index=0, num_shards=1, shuffle=False, seed=0,
                            num_epochs=1, read_threads=0)
    return pipeline.PackMaskDataset(d, special=SPECIAL, seq_len=S, batch_size=1,
                                    max_predictions=10, mask_prob=0.15, seed=0, stream=0,
                                    drop_remainder=True)
  plain, sliced = build(), build()
  sliced.set_slice(slice(1, None, 2))
  rows = _rows(list(sliced))
  assert {int(r[1]) - 5 for r in rows if 5 <= r[1] < 5 + N_DOCS} <= set(range(1, N_DOCS, 2))
  a = masking.batch_rng(0, 0, plain.worker, 0).random(4)
  b = masking.batch_rng(0, 0, sliced.worker, 0).random(4)
  assert not np.allclose(a, b)
