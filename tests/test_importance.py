"""Importance strategies: the loss-EMA update checked against hand-computed numbers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokendrop_jax import importance as imp

SPECIALS = (0, 1, 2, 3, 4)


def test_loss_ema_hand_computed():
  table = jnp.full((8,), 10.0)
  ids = jnp.array([[5, 6, 5], [7, 5, 0]])
  losses = jnp.array([[2.0, 4.0, 6.0], [1.0, 7.0, 100.0]])
  weights = jnp.array([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])
  out = np.asarray(imp.update_loss_ema(table, ids, losses, weights, beta=0.9, special_ids=SPECIALS))
  # id 5: three live slots, mean loss (2 + 6 + 7) / 3 = 5 -> 0.9 * 10 + 0.1 * 5 = 9.5, once.
  # id 6: one slot, loss 4 -> 9.4.  id 7: weight 0 -> unchanged.  id 0 (PAD): weight 0.
  np.testing.assert_allclose(out, [10, 10, 10, 10, 10, 9.5, 9.4, 10], rtol=1e-6)


def test_loss_ema_two_steps_compound():
  table = jnp.full((6,), 10.0)
  ids, w = jnp.array([[5]]), jnp.array([[1.0]])
  t1 = imp.update_loss_ema(table, ids, jnp.array([[0.0]]), w, beta=0.5, special_ids=SPECIALS)
  t2 = imp.update_loss_ema(t1, ids, jnp.array([[2.0]]), w, beta=0.5, special_ids=SPECIALS)
  assert float(t1[5]) == 5.0 and float(t2[5]) == 3.5


def test_loss_ema_keeps_specials_pinned_and_ignores_padding_slots():
  table = jnp.arange(8, dtype=jnp.float32)
  ids = jnp.array([[4, 2, 7, 0]])  # MASK, CLS as targets with weight 1; PAD padding slot
  out = imp.update_loss_ema(table, ids, jnp.array([[50.0, 50.0, 50.0, 50.0]]),
                            jnp.array([[1.0, 1.0, 1.0, 0.0]]), beta=0.5, special_ids=SPECIALS)
  np.testing.assert_array_equal(np.asarray(out)[:7], np.arange(7))
  assert float(out[7]) == 0.5 * 7 + 0.5 * 50


def test_loss_ema_takes_no_gradient_from_losses():
  f = lambda l: imp.update_loss_ema(jnp.zeros(6), jnp.array([[5]]), l, jnp.ones((1, 1)),
                                    beta=0.5, special_ids=SPECIALS).sum()
  assert float(jax.grad(f)(jnp.ones((1, 1)))[0, 0]) == 0.0


def test_count_token_ids_and_frequency_scores():
  counts = imp.count_token_ids([np.array([5, 5, 6]), np.array([[5, 7], [7, 7]])], 8)
  np.testing.assert_array_equal(counts, [0, 0, 0, 0, 0, 3, 1, 3])
  scores = imp.frequency_importance(counts)
  assert scores[6] > scores[5] == scores[7] and scores[0] > scores[6]  # rare = important
  np.testing.assert_allclose(scores[5], -np.log(4 / 15), rtol=1e-6)
  with pytest.raises(ValueError, match="out of range"):
    imp.count_token_ids([np.array([8])], 8)


def test_init_importance():
  np.testing.assert_array_equal(imp.init_importance("loss_ema", 4, ema_init=10.0), [10.0] * 4)
  with pytest.raises(ValueError, match="counts"):
    imp.init_importance("frequency", 4)
  with pytest.raises(ValueError, match="vocab_size"):
    imp.init_importance("frequency", 4, counts=np.ones(3))
  with pytest.raises(ValueError, match="token_drop.strategy"):
    imp.init_importance("entropy", 4)


def test_token_scores():
  table = jnp.array([0.0, 1.0, 2.0, 3.0])
  ids = jnp.array([[3, 1, 2]])
  np.testing.assert_array_equal(imp.get("loss_ema").scores(table, ids, None), [[3.0, 1.0, 2.0]])
  r1 = imp.get("random").scores(table, ids, jax.random.PRNGKey(0))
  r2 = imp.get("random").scores(table, ids, jax.random.PRNGKey(1))
  assert r1.shape == ids.shape and not np.allclose(r1, r2)


def test_strategies_say_what_they_do():
  assert [s for s in imp.names() if imp.get(s).drops] == ["loss_ema", "frequency", "random"]
  assert not imp.get("none").drops and imp.get("none").update is None
  assert imp.get("loss_ema").update is imp.update_loss_ema
  assert [s for s in imp.names() if imp.get(s).needs_counts] == ["frequency"]
  assert [s for s in imp.names() if imp.get(s).per_draw] == ["random"]
  # "none" starts from the same constant vector as loss_ema: one checkpoint layout for all.
  np.testing.assert_array_equal(imp.init_importance("none", 3, ema_init=2.0), [2.0] * 3)
  with pytest.raises(ValueError, match="exists already"):
    imp.register(imp.Strategy("random"))
