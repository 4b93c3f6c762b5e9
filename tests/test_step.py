"""The jitted train step: one compile per step function, accumulation, importance."""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tokendrop_jax import importance, synthetic
from tokendrop_jax.model.bert import BertForPretraining
from tokendrop_jax.model.config import BertConfig
from tokendrop_jax.training import optim, state as state_lib, step as step_lib

CFG = BertConfig(vocab_size=64, hidden_size=16, num_layers=4, num_heads=2, intermediate_size=32,
                 max_position=16)
B, S, P, K = 8, 16, 3, 8
OPTIM = ml_collections.ConfigDict(dict(learning_rate=1e-2, weight_decay=0.01, warmup_steps=2,
                                       b1=0.9, b2=0.999, eps=1e-6, grad_clip_norm=1.0))


def _setup(strategy, cfg=CFG, grad_accum_steps=1, counts=None):
  model = BertForPretraining(cfg)
  optimizer, schedule = optim.make_optimizer(OPTIM, 100)
  imp0 = importance.init_importance(strategy, cfg.vocab_size, counts=counts)
  state = jax.jit(lambda r: nn.unbox(state_lib.make_state_init(model, optimizer, S, P)(r, imp0)))(
      jax.random.PRNGKey(0))
  settings = step_lib.DropSettings(strategy=strategy,
                                   keep_tokens=K if importance.get(strategy).drops else None,
                                   special_ids=synthetic.SPECIAL_IDS)
  return state, step_lib.make_train_step(model, optimizer, schedule, settings, grad_accum_steps)


@pytest.mark.parametrize("strategy", ["none", "loss_ema", "frequency", "random"])
def test_step_compiles_once_and_learns(strategy):
  counts = np.arange(CFG.vocab_size) if strategy == "frequency" else None
  state, train_step = _setup(strategy, counts=counts)
  traces = []

  def counted(state, batch):
    traces.append(1)
    return train_step(state, batch)

  step = jax.jit(counted, donate_argnums=0)
  imp_before = np.asarray(state.importance)
  losses = []
  for i in range(12):
    state, metrics = step(state, synthetic.mlm_batch(i % 2, B, S, P, CFG.vocab_size))
    losses.append(float(metrics["loss"]))
  assert len(traces) == 1
  assert int(state.step) == 12
  assert losses[-1] < losses[0]
  assert float(metrics["kept_fraction"]) == (1.0 if strategy == "none" else K / S)
  changed = not np.array_equal(np.asarray(state.importance), imp_before)
  assert changed == (strategy == "loss_ema")


def test_gradient_accumulation_equals_one_big_batch():
  cfg = BertConfig(**{**CFG.__dict__, "dropout_rate": 0.0, "attention_dropout_rate": 0.0})
  batch = synthetic.mlm_batch(3, B, S, P, CFG.vocab_size, pad_fraction=0.3)
  batch["masked_lm_weights"][0, -1] = 0.0  # unequal weights per microbatch
  s1, step1 = _setup("loss_ema", cfg)
  s4, step4 = _setup("loss_ema", cfg, grad_accum_steps=4)
  s1, m1 = jax.jit(step1)(s1, batch)
  s4, m4 = jax.jit(step4)(s4, batch)
  for a, b in zip(jax.tree_util.tree_leaves(s1), jax.tree_util.tree_leaves(s4)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
  np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)


def test_weight_decay_mask_skips_layernorm_and_bias():
  state, _ = _setup("none")
  mask = optim.weight_decay_mask(state.params)
  assert mask["bert"]["layer_0"]["intermediate"]["kernel"] is True
  assert mask["bert"]["layer_0"]["intermediate"]["bias"] is False
  assert mask["bert"]["layer_0"]["attention"]["query"]["bias"] is False  # 2-D bias
  assert mask["bert"]["embeddings"]["layer_norm"]["scale"] is False
  assert mask["mlm"]["output_bias"] is False
  assert mask["bert"]["embeddings"]["word"]["embedding"] is True
  assert mask["bert"]["layer_0"]["attention"]["out_bias"] is False


def test_weight_decay_of_every_bert_base_parameter():
  """Every parameter of bert_base with its flag: matrices and embeddings decay, nothing else."""
  from tests.test_config import load
  from tokendrop_jax import config_lib
  cfg = config_lib.model_config(load("bert_base"))
  shapes = jax.eval_shape(lambda: nn.unbox(BertForPretraining(cfg).init(
      jax.random.PRNGKey(0), *(jnp.zeros((1, 8), jnp.int32),) * 3, jnp.zeros((1, 2), jnp.int32))))
  flags = jax.tree_util.tree_flatten_with_path(optim.weight_decay_mask(shapes["params"]))[0]
  leaves = dict(jax.tree_util.tree_flatten_with_path(shapes["params"])[0])
  table = {"/".join(k.key for k in path): (flag, leaves[path].shape) for path, flag in flags}
  in_layer = lambda k: re.search(r"/layer_\d+/", k)
  layer0 = {k: v for k, v in table.items() if not in_layer(k) or "/layer_0/" in k}
  assert {k: flag for k, (flag, _) in layer0.items()} == {
      "bert/embeddings/word/embedding": True, "bert/embeddings/position/embedding": True,
      "bert/embeddings/token_type/embedding": True,
      "bert/embeddings/layer_norm/scale": False, "bert/embeddings/layer_norm/bias": False,
      **{f"bert/layer_0/attention/{p}/{w}": w == "kernel"
         for p in ("query", "key", "value") for w in ("kernel", "bias")},
      "bert/layer_0/attention/out_kernel": True, "bert/layer_0/attention/out_bias": False,
      "bert/layer_0/attention_norm/scale": False, "bert/layer_0/attention_norm/bias": False,
      "bert/layer_0/intermediate/kernel": True, "bert/layer_0/intermediate/bias": False,
      "bert/layer_0/output/kernel": True, "bert/layer_0/output/bias": False,
      "bert/layer_0/output_norm/scale": False, "bert/layer_0/output_norm/bias": False,
      "mlm/transform/kernel": True, "mlm/transform/bias": False,
      "mlm/transform_norm/scale": False, "mlm/transform_norm/bias": False,
      "mlm/output_bias": False,
  }
  per_layer = sum("/layer_0/" in k for k in table)
  assert per_layer == 16 and len(table) == len(layer0) + 11 * per_layer  # 11 more layers alike
  for name, (flag, shape) in table.items():
    assert flag == (len(shape) >= 2 and not name.endswith("bias")), name  # 2-D q/k/v biases too


def test_learning_rate_schedule():
  sched = optim.learning_rate_schedule(1.0, 10, 110)
  assert float(sched(0)) == 0.0 and float(sched(5)) == pytest.approx(0.5)
  assert float(sched(10)) == pytest.approx(1.0) and float(sched(60)) == pytest.approx(0.5)
  assert float(sched(110)) == pytest.approx(0.0)


def test_eval_step_runs_the_full_model():
  state, _ = _setup("loss_ema")
  model = BertForPretraining(CFG)
  batch = synthetic.mlm_batch(0, B, S, P, CFG.vocab_size)
  sums = jax.jit(step_lib.make_eval_step(model))(state.params, batch)
  logits = model.apply({"params": state.params}, batch["input_ids"], batch["input_mask"],
                       batch["token_type_ids"], batch["masked_lm_positions"])
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), batch["masked_lm_ids"][..., None], -1)
  np.testing.assert_allclose(sums["loss_sum"], ce.sum(), rtol=1e-5)
  assert float(sums["weight_sum"]) == B * P


@pytest.mark.slow  # over 30 s on 2 cores; CI runs it in the slow suite
def test_a_new_strategy_is_one_definition():
  """Registering a Strategy is all it takes: configs accept it, the step plan drops with
  it, and the train step scores and updates with its functions."""
  from tests.test_config import load
  from tokendrop_jax import config_checks, config_lib
  from tokendrop_jax.training import step_plan

  seen_ids = []

  def count_update(imp, ids, losses, weights, *, beta, special_ids):
    del losses, beta, special_ids
    seen_ids.append(1)  # traced once
    return imp.at[ids.reshape(-1)].add(weights.reshape(-1))

  twin = importance.register(importance.Strategy(
      "ema_twin", scores=importance.LOSS_EMA.scores, update=importance.LOSS_EMA.update))
  leftmost = importance.register(importance.Strategy(
      "leftmost", scores=lambda imp, ids, rng: -jnp.broadcast_to(
          jnp.arange(ids.shape[1], dtype=jnp.float32), ids.shape), update=count_update))
  try:
    c = load("tiny", "ema_twin")
    config_checks.validate(c)
    assert step_plan.kinds(c) == step_plan.kinds(load("tiny", "loss_ema"))
    with pytest.raises(ValueError, match="token_drop.layerwise needs"):
      config_checks.validate(config_lib.apply_variant(load("tiny"), "leftmost+layerwise"))
    batch = synthetic.mlm_batch(0, B, S, P, CFG.vocab_size)
    # Same functions as loss_ema: the very same update, bit for bit.
    (s_twin, step_twin), (s_ema, step_ema) = _setup(twin.name), _setup("loss_ema")
    out_twin, out_ema = jax.jit(step_twin)(s_twin, batch), jax.jit(step_ema)(s_ema, batch)
    jax.tree.map(np.testing.assert_array_equal, out_twin, out_ema)
    # Its own update runs on the step's prediction ids.
    state, step = _setup(leftmost.name)
    new, _ = jax.jit(step)(state, batch)
    assert seen_ids == [1]
    np.testing.assert_array_equal(
        np.asarray(new.importance) - np.asarray(state.importance),
        np.bincount(batch["masked_lm_ids"].reshape(-1), batch["masked_lm_weights"].reshape(-1),
                    CFG.vocab_size))
  finally:
    importance.unregister("ema_twin")
    importance.unregister("leftmost")
  with pytest.raises(ValueError, match="token_drop.strategy must be one of"):
    importance.get("ema_twin")



def test_cross_entropy_is_optaxs_in_value_and_gradient_without_a_scatter():
  import optax

  from tokendrop_jax.training import step as step_lib
  logits = jax.random.normal(jax.random.key(0), (3, 5, 11), jnp.float32) * 4
  labels = jax.random.randint(jax.random.key(1), (3, 5), 0, 11)
  weights = jax.random.uniform(jax.random.key(2), (3, 5))
  ours = lambda x: (step_lib.cross_entropy(x, labels) * weights).sum()  # noqa: E731
  theirs = lambda x: (optax.softmax_cross_entropy_with_integer_labels(x, labels)  # noqa: E731
                      * weights).sum()
  np.testing.assert_allclose(step_lib.cross_entropy(logits, labels),
                             optax.softmax_cross_entropy_with_integer_labels(logits, labels),
                             rtol=1e-6)
  np.testing.assert_allclose(jax.grad(ours)(logits), jax.grad(theirs)(logits), atol=1e-6)
  # bfloat16 logits are taken in float32
  half = step_lib.cross_entropy(logits.astype(jnp.bfloat16), labels)
  assert half.dtype == jnp.float32
  np.testing.assert_array_equal(half, step_lib.cross_entropy(
      logits.astype(jnp.bfloat16).astype(jnp.float32), labels))
  # the point of it: the backward pass is elementwise, no scatter into a logits-sized buffer
  hlo = jax.jit(jax.grad(ours)).lower(logits).compile().as_text()
  assert " scatter(" not in hlo
  assert " scatter(" in jax.jit(jax.grad(theirs)).lower(logits).compile().as_text()
