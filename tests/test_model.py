"""The encoder and token dropping: equivalences, the loop reference, gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import reference_bert
from tokendrop_jax import synthetic
from tokendrop_jax.model import token_drop
from tokendrop_jax.model.bert import BertForPretraining, BertForSequenceClassification
from tokendrop_jax.model.config import BertConfig
from tokendrop_jax.model.encoder import BertEncoder

CFG = BertConfig(vocab_size=50, hidden_size=16, num_layers=5, num_heads=2, intermediate_size=32,
                 max_position=16, dropout_rate=0.1, attention_dropout_rate=0.1,
                 initializer_range=0.3)  # large weights: every layer visibly matters
B, S, P = 3, 12, 3


@pytest.fixture(scope="module")
def setup():
  batch = synthetic.mlm_batch(0, B, S, P, CFG.vocab_size, pad_fraction=0.4)
  model = BertForPretraining(CFG)
  boxed = model.init(jax.random.PRNGKey(0), batch["input_ids"], batch["input_mask"],
                     batch["token_type_ids"], batch["masked_lm_positions"])["params"]
  return model, boxed, nn.unbox(boxed), batch


def _apply(model, params, batch, keep_idx=None, **kw):
  return model.apply({"params": params}, batch["input_ids"], batch["input_mask"],
                     batch["token_type_ids"], batch["masked_lm_positions"], keep_idx, **kw)


def test_keep_all_equals_plain_encoder(setup):
  model, _, params, batch = setup
  full = _apply(model, params, batch)
  scores = jax.random.uniform(jax.random.PRNGKey(1), (B, S))
  keep = token_drop.select_kept(scores, batch["input_ids"], batch["input_mask"],
                                synthetic.SPECIAL_IDS, S)
  np.testing.assert_array_equal(keep, np.tile(np.arange(S), (B, 1)))
  np.testing.assert_allclose(_apply(model, params, batch, keep), full, atol=1e-5, rtol=0)


def test_full_model_matches_loop_reference(setup):
  model, _, params, batch = setup
  logits = np.asarray(_apply(model, params, batch))
  for b in range(B):
    ref = reference_bert.mlm_logits(params, CFG, batch["input_ids"][b], batch["input_mask"][b],
                                    batch["token_type_ids"][b], batch["masked_lm_positions"][b])
    np.testing.assert_allclose(logits[b], ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("keep", [4, 7])
def test_drop_forward_matches_loop_reference(setup, keep):
  model, _, params, batch = setup
  scores = np.asarray(jax.random.normal(jax.random.PRNGKey(keep), (B, S)))
  keep_idx = token_drop.select_kept(jnp.asarray(scores), batch["input_ids"], batch["input_mask"],
                                    synthetic.SPECIAL_IDS, keep)
  logits = np.asarray(_apply(model, params, batch, keep_idx))
  full = np.asarray(_apply(model, params, batch))
  for b in range(B):
    kept = reference_bert.keep_set(scores[b], list(batch["input_ids"][b]), batch["input_mask"][b],
                                   synthetic.SPECIAL_IDS, keep)
    assert list(np.asarray(keep_idx[b])) == kept
    ref = reference_bert.mlm_logits(params, CFG, batch["input_ids"][b], batch["input_mask"][b],
                                    batch["token_type_ids"][b], batch["masked_lm_positions"][b],
                                    kept=kept)
    np.testing.assert_allclose(logits[b], ref, atol=1e-4, rtol=1e-4)
  assert np.abs(logits - full).max() > 1e-3  # dropping really changes the output


def test_kept_rows_are_distinct_and_sorted_so_their_gradient_needs_no_atomics():
  """gather_kept / scatter_tokens tell XLA their indices are distinct and sorted: true of
  every select_kept row (ties, padding, random tie-breaks), and it makes the gradient of the
  gather a scatter that a GPU runs as plain writes instead of atomic adds."""
  ids = jax.random.randint(jax.random.PRNGKey(0), (16, 24), 0, 9)
  mask = (jnp.arange(24) < jax.random.randint(jax.random.PRNGKey(1), (16, 1), 3, 25))
  scores = jnp.round(jax.random.normal(jax.random.PRNGKey(2), (16, 24)))  # many ties
  for tie_rng in (None, jax.random.PRNGKey(3)):
    keep = np.asarray(token_drop.select_kept(scores, ids, mask.astype(jnp.int32),
                                             synthetic.SPECIAL_IDS, 10, tie_rng))
    assert (np.diff(keep, axis=1) > 0).all()
  x = jax.random.normal(jax.random.PRNGKey(4), (16, 24, 8))
  grad = jax.grad(lambda x: (token_drop.gather_kept(x, keep) ** 2).sum())
  np.testing.assert_allclose(grad(x), jax.grad(
      lambda x: (token_drop.gather_tokens(x, keep) ** 2).sum())(x), rtol=1e-6)
  scatters = [line for line in jax.jit(grad).lower(x).as_text().splitlines()
              if "scatter" in line and "unique_indices" in line]
  assert scatters and all("unique_indices = true" in line and "indices_are_sorted = true" in line
                          for line in scatters)


def test_selection_keeps_specials_and_drops_padding_first():
  ids = jnp.array([[2, 10, 4, 11, 12, 3, 0, 0], [2, 10, 11, 12, 13, 14, 15, 3]])
  mask = (ids != 0).astype(jnp.int32).at[1].set(1)
  scores = jnp.array([[0., 9., -5., 8., 7., 0., 99., 99.], [-9., 1., 2., 3., 4., 5., 6., -9.]])
  keep = token_drop.select_kept(scores, ids, mask, synthetic.SPECIAL_IDS, 4)
  # Row 0: CLS, MASK, SEP always; then the best ordinary token (9.0 at 1); padding never.
  np.testing.assert_array_equal(keep[0], [0, 1, 2, 5])
  # Row 1: CLS and SEP despite low scores, then the two best ordinary tokens.
  np.testing.assert_array_equal(keep[1], [0, 5, 6, 7])
  # Fewer real tokens than keep: padding fills the remainder, masked out downstream.
  keep7 = token_drop.select_kept(scores, ids, mask, synthetic.SPECIAL_IDS, 7)
  np.testing.assert_array_equal(keep7[0], [0, 1, 2, 3, 4, 5, 6])


def test_selection_with_bert_vocab_special_ids():
  """BERT's vocab.txt ids ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103): the
  same kept set as the rows above written with our ids 0..4, token for token."""
  bert = {0: 0, 1: 100, 2: 101, 3: 102, 4: 103}
  ours = np.array([[2, 10, 4, 11, 12, 3, 0, 0], [2, 10, 11, 1, 13, 14, 15, 3]])
  ids = jnp.asarray(np.vectorize(lambda i: bert.get(i, i + 1000))(ours))
  mask = (ids != 0).astype(jnp.int32)
  scores = jnp.array([[0., 9., -5., 8., 7., 0., 99., 99.], [-9., 1., 2., -7., 4., 5., 6., -9.]])
  for keep in (4, 5, 7):
    got = token_drop.select_kept(scores, ids, mask, (0, 100, 101, 102, 103), keep)
    want = token_drop.select_kept(scores, jnp.asarray(ours), mask, synthetic.SPECIAL_IDS, keep)
    np.testing.assert_array_equal(got, want)
  keep = token_drop.select_kept(scores, ids, mask, (0, 100, 101, 102, 103), 4)
  np.testing.assert_array_equal(keep[0], [0, 1, 2, 5])  # CLS, best token, MASK, SEP
  np.testing.assert_array_equal(keep[1], [0, 3, 6, 7])  # CLS, UNK, best token, SEP
  keep7 = token_drop.select_kept(scores, ids, mask, (0, 100, 101, 102, 103), 7)
  np.testing.assert_array_equal(keep7[0], [0, 1, 2, 3, 4, 5, 6])  # padding (6, 7) last
  # With our ids, BERT's specials are ordinary tokens: the kept set differs.
  assert not np.array_equal(token_drop.select_kept(scores, ids, mask, synthetic.SPECIAL_IDS, 4),
                            keep)


def test_selection_rejects_bad_keep():
  with pytest.raises(ValueError, match="keep_tokens"):
    token_drop.select_kept(jnp.zeros((1, 4)), jnp.zeros((1, 4), jnp.int32),
                           jnp.ones((1, 4), jnp.int32), (), 5)


def test_gradients_reach_every_parameter_in_drop_mode(setup):
  model, _, params, batch = setup
  keep_idx = token_drop.select_kept(jax.random.normal(jax.random.PRNGKey(3), (B, S)),
                                    batch["input_ids"], batch["input_mask"],
                                    synthetic.SPECIAL_IDS, 6)

  def loss(p):
    logits = _apply(model, p, batch, keep_idx, deterministic=False,
                    rngs={"dropout": jax.random.PRNGKey(4)})
    return jax.nn.logsumexp(logits, -1).mean() - logits[..., 7].mean()

  grads = jax.jit(jax.grad(loss))(params)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g) != 0)]
  # Position embeddings of padded positions past every row get no gradient by design,
  # but at least one row uses each position here; token type 1 is never used.
  assert dead == ["['bert']['embeddings']['token_type']['embedding']"] or dead == [], dead
  for i in range(CFG.num_layers):
    assert np.abs(np.asarray(grads["bert"][f"layer_{i}"]["intermediate"]["kernel"])).sum() > 0


def test_every_parameter_has_logical_axes(setup):
  _, boxed, _, _ = setup
  leaves = jax.tree_util.tree_leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  allowed = {None, "vocab", "embed", "mlp", "heads", "kv"}
  for x in leaves:
    assert len(x.names) == x.value.ndim and set(x.names) <= allowed, x.names


def test_dropout_is_active_only_when_not_deterministic(setup):
  model, _, params, batch = setup
  a = _apply(model, params, batch, deterministic=False, rngs={"dropout": jax.random.PRNGKey(0)})
  b = _apply(model, params, batch, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
  assert np.abs(np.asarray(a - b)).max() > 1e-4
  np.testing.assert_array_equal(_apply(model, params, batch), _apply(model, params, batch))


def test_bf16_compute_keeps_f32_params(setup):
  _, _, params, batch = setup
  cfg = BertConfig(**{**CFG.__dict__, "dtype": "bfloat16"})
  model = BertForPretraining(cfg)
  p16 = nn.unbox(model.init(jax.random.PRNGKey(0), batch["input_ids"], batch["input_mask"],
                            batch["token_type_ids"], batch["masked_lm_positions"])["params"])
  assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(p16))
  out16 = _apply(model, params, batch)
  out32 = _apply(BertForPretraining(CFG), params, batch)
  assert out16.dtype == jnp.float32
  rel = np.abs(np.asarray(out16 - out32)).max() / np.abs(np.asarray(out32)).max()
  assert 0 < rel < 0.05, rel  # bf16 really used, and close


def test_classifier_shares_the_encoder_parameters(setup):
  _, _, params, batch = setup
  clf = BertForSequenceClassification(CFG, num_labels=3)
  p = nn.unbox(clf.init(jax.random.PRNGKey(0), batch["input_ids"], batch["input_mask"],
                        batch["token_type_ids"])["params"])
  assert jax.tree.map(jnp.shape, p["bert"]) == jax.tree.map(jnp.shape, params["bert"])
  p = {**p, "bert": params["bert"]}
  logits = clf.apply({"params": p}, batch["input_ids"], batch["input_mask"], batch["token_type_ids"])
  assert logits.shape == (B, 3)
  enc = BertEncoder(CFG).apply({"params": params["bert"]}, batch["input_ids"], batch["input_mask"],
                               batch["token_type_ids"])
  pooled = np.tanh(np.asarray(enc[:, 0]) @ np.asarray(p["pooler"]["kernel"]) + p["pooler"]["bias"])
  np.testing.assert_allclose(logits, pooled @ p["classifier"]["kernel"] + p["classifier"]["bias"],
                             atol=1e-5)


def _loss_and_grads(model, params, batch, keep_idx):
  def loss(p):  # rbg dropout keys (train.prng_impl=rbg): half threefry's compile time on CPU
    logits = _apply(model, p, batch, keep_idx, deterministic=False,
                    rngs={"dropout": jax.random.key(4, impl="rbg")})
    return jax.nn.logsumexp(logits, -1).mean()
  return jax.jit(jax.value_and_grad(loss))(params)


@pytest.fixture(scope="module")
def no_remat(setup):
  """(keep_idx, loss, grads) of the token-dropping model without remat: its full, cross,
  kept-only and last layers all run under each policy below."""
  model, _, params, batch = setup
  keep_idx = token_drop.select_kept(jax.random.normal(jax.random.PRNGKey(3), (B, S)),
                                    batch["input_ids"], batch["input_mask"],
                                    synthetic.SPECIAL_IDS, 6)
  return (keep_idx,) + _loss_and_grads(model, params, batch, keep_idx)


@pytest.mark.parametrize("remat", ["full", "dots", "dots_no_batch"])
def test_remat_policies_give_the_same_loss_and_gradients(setup, no_remat, remat):
  """Remat changes what is stored, not the math: same loss and gradients, dropout on
  (the masks are recomputed from the same keys)."""
  _, _, params, batch = setup
  keep_idx, loss0, grads0 = no_remat
  model = BertForPretraining(BertConfig(**{**CFG.__dict__, "remat": remat}))
  loss1, grads1 = _loss_and_grads(model, params, batch, keep_idx)
  np.testing.assert_allclose(loss0, loss1, atol=1e-6, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(grads0), jax.tree_util.tree_leaves(grads1)):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)


def test_remat_bools_are_the_old_spelling():
  """Configs and saved runs from before the policies: True = "full", False = "none"."""
  from tokendrop_jax.model.config import REMAT_POLICIES
  from tokendrop_jax.model.layers import remat_layer
  assert BertConfig(remat=True).remat == "full" and BertConfig(remat=False).remat == "none"
  assert remat_layer(BertConfig(remat=False)) is remat_layer(BertConfig()) is not (
      remat_layer(BertConfig(remat=True)))
  assert REMAT_POLICIES["full"] is jax.checkpoint_policies.nothing_saveable


@pytest.mark.parametrize("field,value,match", [
    ("remat", "some", r"model.remat must be one of \('none', 'full', 'dots', 'dots_no_batch'\)"),
    ("hidden_act", "relu", r"model.hidden_act must be one of \('gelu_tanh', 'gelu'\)"),
    # Scanned, the cross layer and the last one stay single: one layer cannot be both.
    ("scan_layers", True, r"model.scan_layers needs model.num_layers >= 2.* got 1")])
def test_bad_model_options_are_refused_naming_the_field(field, value, match):
  from tokendrop_jax import config_checks
  from tests.test_config import load
  c = load("tiny", "none")  # the full model: any number of layers
  c.model[field] = value
  if field == "scan_layers":
    c.model.num_layers = 1
  with pytest.raises(ValueError, match=match):
    config_checks.validate(c)


def test_exact_gelu_is_erf_in_the_ffn_and_the_head(setup):
  """hidden_act="gelu" swaps the activation at both sites and nothing else."""
  import math
  from tokendrop_jax.model.config import ACTIVATIONS
  _, _, params, batch = setup
  cfg = BertConfig(**{**CFG.__dict__, "hidden_act": "gelu"})
  erf = np.vectorize(lambda v: 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))))
  x = np.linspace(-4, 4, 101).astype(np.float32)
  np.testing.assert_allclose(ACTIVATIONS[cfg.hidden_act](x), erf(x), atol=1e-6)
  tanh_logits = _apply(BertForPretraining(CFG), params, batch)
  erf_logits = _apply(BertForPretraining(cfg), params, batch)
  assert 1e-4 < np.abs(np.asarray(tanh_logits) - np.asarray(erf_logits)).max() < 0.1


def test_sort_selection_equals_top_k_ties_included():
  """The per-example sort keeps exactly what `lax.top_k` keeps, ties to the lower position."""
  rng = np.random.default_rng(0)
  scores = jnp.asarray(rng.integers(0, 4, (6, 32)).astype(np.float32))  # many ties
  ids = jnp.asarray(rng.integers(5, 50, (6, 32))).at[:, 0].set(2).at[1, 5:9].set(4)
  mask = jnp.ones((6, 32), jnp.int32).at[3, 20:].set(0).at[4, 6:].set(0)
  specials = (0, 1, 2, 3, 4)
  for keep in (1, 7, 12, 32):
    got = token_drop.select_kept(scores, ids, mask, specials, keep)
    _, want = jax.lax.top_k(token_drop.selection_scores(scores, ids, mask, specials), keep)
    np.testing.assert_array_equal(got, np.sort(np.asarray(want), -1))
    assert got.dtype == jnp.int32


def test_random_ties_break_only_exact_ties_at_random():
  """Equal scores (every id at the initial EMA): leftmost-first keeps the head of each row;
  random ties keep a random subset, still every special and never padding, and a score
  that is higher still wins."""
  b, s, keep = 4, 32, 12
  ids = jnp.full((b, s), 9, jnp.int32).at[:, 0].set(2).at[:, 31].set(3)
  mask = jnp.ones((b, s), jnp.int32).at[3, 24:].set(0)
  scores = jnp.zeros((b, s)).at[:, 20].set(1.0)  # one token more important than the rest
  specials = (0, 1, 2, 3, 4)
  leftmost = np.asarray(token_drop.select_kept(scores, ids, mask, specials, keep))
  assert leftmost[0].tolist() == [0] + list(range(1, 10)) + [20, 31]
  a = np.asarray(token_drop.select_kept(scores, ids, mask, specials, keep, jax.random.key(0)))
  again = token_drop.select_kept(scores, ids, mask, specials, keep, jax.random.key(0))
  other = np.asarray(token_drop.select_kept(scores, ids, mask, specials, keep, jax.random.key(1)))
  np.testing.assert_array_equal(a, again)  # a function of the key
  assert not np.array_equal(a, other) and not np.array_equal(a, leftmost)
  for row, kept in enumerate(a):
    assert len(set(kept.tolist())) == keep and list(kept) == sorted(kept)
    assert 0 in kept and 20 in kept  # [CLS] and the higher score
    assert (31 in kept) == (row != 3)  # [SEP], except where it is padding
    assert all(mask[row, p] for p in kept)
  # Without ties the random key changes nothing.
  distinct = jax.random.normal(jax.random.key(5), (b, s))
  np.testing.assert_array_equal(
      token_drop.select_kept(distinct, ids, mask, specials, keep),
      token_drop.select_kept(distinct, ids, mask, specials, keep, jax.random.key(2)))


def test_bf16_embedding_gradients_are_summed_in_the_param_dtype():
  """The gradient of an embedding row is the sum over every occurrence of its id; taken
  from a bfloat16 table, 4096 occurrences of one id summed to 256 (bf16 stalls there).
  The rows are taken in f32 and cast after, so the sum is exact, and the forward values
  are the bfloat16 ones."""
  from tokendrop_jax.model.embeddings import lookup
  ids = jnp.full((64, 64), 3, jnp.int32)  # 4096 occurrences of id 3
  for dtype in (jnp.bfloat16, None):  # the word table (model dtype), token types (param dtype)
    embed = nn.Embed(8, 4, dtype=dtype)
    params = embed.init(jax.random.PRNGKey(0), ids)

    def total(params):
      rows = embed.apply(params, ids, method=lambda m, i: lookup(m, i, None))
      assert rows.dtype == (dtype or jnp.float32)
      return rows.astype(jnp.float32).sum()

    grad = jax.grad(total)(params)["params"]["embedding"]
    assert grad.dtype == jnp.float32
    np.testing.assert_array_equal(grad[3], np.full((4,), 4096.0))
    np.testing.assert_array_equal(np.delete(np.asarray(grad), 3, axis=0), 0.0)
