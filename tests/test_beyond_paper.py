"""Options beyond the paper: layer-wise random dropping, ScTD consistency, keep schedules."""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags

from tests import reference_bert
from tests.resume_checks import final_state, sigterm_once_training
from tests.test_config import load
from tests.test_model import CFG as MODEL_CFG
from tests.test_step import B, CFG, K, OPTIM, P, S
from tokendrop_jax import config_checks, flops, importance, synthetic
from tokendrop_jax.model import token_drop
from tokendrop_jax.model.bert import BertForPretraining
from tokendrop_jax.model.config import BertConfig
from tokendrop_jax.training import loop, optim, state as state_lib, step as step_lib
from tokendrop_jax.training import metrics, step_plan

flags.FLAGS.mark_as_parsed()


# --- config ---------------------------------------------------------------------------------

def test_variant_options_set_the_fields():
  c = load("tiny", "random+layerwise+schedule+sctd")
  td = c.token_drop
  assert (td.strategy, td.layerwise, td.keep_schedule_stages, td.consistency_weight) == (
      "random", True, 4, 1.0)
  config_checks.validate(c)
  default = load("tiny", "loss_ema").token_drop  # the paper's method: every option off
  assert (default.layerwise, default.keep_schedule_stages, default.consistency_weight) == (
      False, 0, 0.0)
  with pytest.raises(ValueError, match="'fast'"):
    load("tiny", "loss_ema+fast")


@pytest.mark.parametrize("field,value,arg", [
    ("layerwise", True, "loss_ema"),
    ("consistency_weight", -1.0, "loss_ema"),
    ("consistency_every", 0, "loss_ema"),
    ("keep_schedule_stages", -2, "loss_ema"),
    ("keep_schedule_fraction", 0.0, "loss_ema"),
    ("consistency_weight", 1.0, "none"),
    ("consistency_form", "fairseq", "loss_ema+sctd"),
])
def test_bad_options_name_the_field(field, value, arg):
  c = load("tiny", arg)
  c.token_drop[field] = value
  with pytest.raises(ValueError, match=f"token_drop.{field}"):
    config_checks.validate(c)


def test_sctd_paper_is_the_authors_settings_and_excludes_sctd():
  td = load("tiny", "loss_ema+sctd_paper").token_drop
  assert (td.consistency_weight, td.consistency_form, td.consistency_every) == (0.05, "paper", 10)
  assert load("tiny", "loss_ema+sctd").token_drop.consistency_form == "head"
  with pytest.raises(ValueError, match="choose one of sctd and sctd_paper"):
    load("tiny", "loss_ema+sctd+sctd_paper")


# --- keep-ratio schedule ----------------------------------------------------------------------

def test_keep_schedule_stages_and_kinds():
  c = load("tiny", "loss_ema+schedule")  # seq 64, keep 32, 4 stages over 90% of 100 steps
  c.train.num_steps = 100
  assert step_plan.keep_stages(c) == [32, 40, 48, 56]
  kept = [step_plan.kind_at(c, s).keep_tokens for s in range(100)]
  assert kept[:23] == [32] * 23 and kept[23:45] == [40] * 22
  assert kept[45:68] == [48] * 23 and kept[68:90] == [56] * 22 and kept[90:] == [None] * 10
  kinds = step_plan.kinds(c)
  assert {step_plan.kind_at(c, s) for s in range(100)} == set(kinds)
  assert len(kinds) == 5  # full + one per stage: the number of compiles
  c.token_drop.keep_schedule_stages = 0
  assert {step_plan.kind_at(c, s) for s in range(100)} == {step_plan.StepKind(32)}


def test_consistency_steps_every_n():
  c = load("tiny", "loss_ema+sctd")
  c.train.num_steps = 40
  kinds = [step_plan.kind_at(c, s) for s in range(40)]
  # The last step of every 10: the step count after it is a multiple of 10, so it is logged.
  assert [s for s, k in enumerate(kinds) if k.consistency] == [9, 19, 29, 39]
  assert {k.name for k in step_plan.kinds(c)} == {"full", "drop32", "drop32_sctd"}


@pytest.mark.parametrize("variant,steps,overrides", [
    ("loss_ema", 100, {}),
    ("none", 37, {}),
    ("loss_ema+sctd", 101, {"consistency_every": 7, "full_start_fraction": 0.13}),
    ("loss_ema+schedule", 997, {"keep_schedule_stages": 3, "keep_schedule_fraction": 0.7}),
    ("random+schedule+sctd", 1000, {"full_start_fraction": 0.05, "full_end_fraction": 0.11}),
    ("random+schedule+sctd", 7, {"keep_schedule_stages": 4}),
])
def test_kind_counts_match_walking_every_step(variant, steps, overrides):
  c = load("tiny", variant)
  c.train.num_steps = steps
  c.token_drop.update(**overrides)
  walked = {}
  for s in range(steps):
    k = step_plan.kind_at(c, s)
    walked[k] = walked.get(k, 0) + 1
  assert step_plan.kind_counts(c) == walked


# --- layer-wise dropping ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_setup():
  batch = synthetic.mlm_batch(0, 3, 12, 3, MODEL_CFG.vocab_size, pad_fraction=0.4)
  model = BertForPretraining(MODEL_CFG)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), batch["input_ids"], batch["input_mask"],
                               batch["token_type_ids"], batch["masked_lm_positions"])["params"])
  return model, params, batch


def _apply(model, params, batch, keep_idx=None):
  return model.apply({"params": params}, batch["input_ids"], batch["input_mask"],
                     batch["token_type_ids"], batch["masked_lm_positions"], keep_idx)


def _layerwise_idx(batch, keep, n_layers, seed):
  return jnp.stack([token_drop.select_kept(
      jax.random.uniform(jax.random.PRNGKey(seed + j), batch["input_ids"].shape),
      batch["input_ids"], batch["input_mask"], synthetic.SPECIAL_IDS, keep)
      for j in range(n_layers)])  # [layers, batch, keep]


def test_layerwise_forward_matches_loop_reference(model_setup):
  model, params, batch = model_setup
  n_mid = MODEL_CFG.num_layers - 1 - MODEL_CFG.split_layer
  keep_idx = _layerwise_idx(batch, 6, n_mid, seed=3)
  assert len({tuple(np.asarray(keep_idx[j, 0])) for j in range(n_mid)}) > 1  # subsets differ
  logits = np.asarray(_apply(model, params, batch, keep_idx))
  for b in range(batch["input_ids"].shape[0]):
    ref = reference_bert.mlm_logits(
        params, MODEL_CFG, batch["input_ids"][b], batch["input_mask"][b],
        batch["token_type_ids"][b], batch["masked_lm_positions"][b],
        kept_per_layer=[list(np.asarray(keep_idx[j, b])) for j in range(n_mid)])
    np.testing.assert_allclose(logits[b], ref, atol=1e-4, rtol=1e-4)


def test_layerwise_keep_all_equals_plain_encoder(model_setup):
  model, params, batch = model_setup
  n_mid = MODEL_CFG.num_layers - 1 - MODEL_CFG.split_layer
  keep_idx = _layerwise_idx(batch, batch["input_ids"].shape[1], n_mid, seed=0)
  np.testing.assert_allclose(_apply(model, params, batch, keep_idx), _apply(model, params, batch),
                             atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match="one row per middle layer"):
    _apply(model, params, batch, keep_idx[:1])


def test_layerwise_flops_drop_the_cross_layer():
  cfg = BertConfig()  # BERT-base
  paper = flops.forward_flops(cfg, 512, 76, 256)
  layerwise = flops.forward_flops(cfg, 512, 76, 256, layerwise=True)
  full = flops.forward_flops(cfg, 512, 76)
  assert layerwise < paper < full
  expected = (flops.layer_flops(cfg, 256, 512) - flops.layer_flops(cfg, 256, 256))
  assert paper - layerwise == expected



def test_sctd_flops_count_the_full_pass_once_or_with_its_backward():
  cfg = BertConfig()
  drop = flops.train_step_flops(cfg, 8, 512, 76, 256)
  target = flops.train_step_flops(cfg, 8, 512, 76, 256, consistency=True)
  paper = flops.train_step_flops(cfg, 8, 512, 76, 256, consistency=True,
                                 consistency_backward=True)
  full_forward = 8 * flops.forward_flops(cfg, 512, 1)
  assert target - drop == full_forward and paper - drop == 3 * full_forward


# --- the train step with the options ----------------------------------------------------------

def _setup(keep, cfg=CFG, grad_accum_steps=1, **options):
  model = BertForPretraining(cfg)
  optimizer, schedule = optim.make_optimizer(OPTIM, 100)
  strategy = options.pop("strategy", "loss_ema")
  imp0 = importance.init_importance("loss_ema", cfg.vocab_size)
  state = jax.jit(lambda r: nn.unbox(state_lib.make_state_init(model, optimizer, S, P)(r, imp0)))(
      jax.random.PRNGKey(0))
  settings = step_lib.DropSettings(strategy=strategy, keep_tokens=keep,
                                   special_ids=synthetic.SPECIAL_IDS, **options)
  return state, step_lib.make_train_step(model, optimizer, schedule, settings, grad_accum_steps)


BATCH = synthetic.mlm_batch(5, B, S, P, CFG.vocab_size, pad_fraction=0.2)


def _leaves(state):
  return jax.tree_util.tree_leaves(jax.device_get(state.params))


def _two_steps(train_step, state):
  """Two steps on BATCH (the first has learning rate 0: warm-up)."""
  step = jax.jit(train_step)
  state, _ = step(state, BATCH)
  return step(state, BATCH)


WIDE = BertConfig(**{**CFG.__dict__, "initializer_range": 0.3})  # at 0.02 [CLS] is near uniform


def test_consistency_kl_is_zero_when_nothing_is_dropped():
  state, plain = _setup(S, WIDE)
  _, sctd = _setup(S, WIDE, consistency_weight=1.0)
  s_plain, m_plain = _two_steps(plain, state)
  s_sctd, m_sctd = _two_steps(sctd, state)  # dropout on: both passes share the masks
  assert abs(float(m_sctd["consistency_kl"])) < 1e-6
  assert "consistency_kl" not in m_plain
  np.testing.assert_allclose(m_sctd["loss"], m_plain["loss"], rtol=1e-6)
  np.testing.assert_allclose(m_sctd["grad_norm"], m_plain["grad_norm"], rtol=1e-6)
  for a, b in zip(_leaves(s_plain), _leaves(s_sctd)):  # with dropping the gap is ~1e-2
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_consistency_term_changes_the_update_when_dropping():
  state, plain = _setup(K, WIDE)  # the same model as above: KL > 0 only from dropping
  _, sctd = _setup(K, WIDE, consistency_weight=1.0)
  _, m_plain = jax.jit(plain)(state, BATCH)
  _, m_sctd = jax.jit(sctd)(state, BATCH)
  assert float(m_sctd["consistency_kl"]) > 1e-4
  np.testing.assert_allclose(m_sctd["loss"], m_plain["loss"], rtol=1e-6)  # the MLM part
  s_plain, _ = _two_steps(plain, state)
  s_sctd, _ = _two_steps(sctd, state)
  assert max(np.abs(a - b).max() for a, b in zip(_leaves(s_plain), _leaves(s_sctd))) > 1e-3


def test_sctd_paper_kl_is_zero_and_the_update_unchanged_when_nothing_is_dropped():
  state, plain = _setup(S, WIDE)
  _, sctd = _setup(S, WIDE, consistency_weight=0.05, consistency_form="paper")
  s_plain, m_plain = _two_steps(plain, state)
  s_sctd, m_sctd = _two_steps(sctd, state)
  assert abs(float(m_sctd["consistency_kl"])) < 1e-6
  np.testing.assert_allclose(m_sctd["grad_norm"], m_plain["grad_norm"], rtol=1e-6)
  for a, b in zip(_leaves(s_plain), _leaves(s_sctd)):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow  # over 30 s on 2 cores; CI runs it in the slow suite
def test_sctd_paper_compares_two_layers_and_changes_the_update_when_dropping():
  state, plain = _setup(K, WIDE)
  _, sctd = _setup(K, WIDE, consistency_weight=0.05, consistency_form="paper")
  _, m_sctd = jax.jit(sctd)(state, BATCH)
  assert float(m_sctd["consistency_kl"]) > 1e-4
  s_plain, _ = _two_steps(plain, state)
  s_sctd, _ = _two_steps(sctd, state)
  assert max(np.abs(a - b).max() for a, b in zip(_leaves(s_plain), _leaves(s_sctd))) > 1e-4
  # The [CLS] states compared are those of the last two layers, in both passes.
  model = BertForPretraining(WIDE)
  args = (BATCH["input_ids"], BATCH["input_mask"], BATCH["token_type_ids"],
          BATCH["masked_lm_positions"])
  x = model.apply({"params": state.params}, *args[:3], method=lambda m, *a: m.bert(*a))
  _, cls = model.apply({"params": state.params}, *args, cls_layers=2)
  assert cls.shape == (2, B, WIDE.hidden_size)
  np.testing.assert_allclose(cls[1], x[:, 0], rtol=1e-6)


@pytest.mark.parametrize("form,reaches", [("paper", True), ("head", False)])
def test_the_gradient_reaches_the_full_pass_only_in_sctd_paper(form, reaches):
  state, _ = _setup(K, WIDE)
  settings = step_lib.DropSettings(strategy="loss_ema", keep_tokens=K,
                                   special_ids=synthetic.SPECIAL_IDS, consistency_weight=1.0,
                                   consistency_form=form)
  loss_fn = step_lib.make_loss_fn(BertForPretraining(WIDE), settings)
  keep_idx = token_drop.select_kept(jax.random.normal(jax.random.PRNGKey(3), (B, S)),
                                    BATCH["input_ids"], BATCH["input_mask"],
                                    synthetic.SPECIAL_IDS, K)
  grad_full = jax.jit(jax.grad(lambda full: loss_fn(
      state.params, BATCH, keep_idx, jax.random.PRNGKey(1), 1.0, full)[0]))(state.params)
  norm = float(optax_global_norm(grad_full))
  assert (norm > 1e-3) if reaches else (norm == 0.0), norm


def optax_global_norm(tree):
  return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree_util.tree_leaves(tree)))


@pytest.mark.slow  # over 30 s on 2 cores; CI runs it in the slow suite
def test_random_ties_change_what_the_first_steps_keep():
  """At init every id has the same EMA: leftmost-first and random ties keep other tokens."""
  state, plain = _setup(K)
  _, ties = _setup(K, random_ties=True)
  _, m_plain = jax.jit(plain)(state, BATCH)
  _, m_ties = jax.jit(ties)(state, BATCH)
  assert np.isfinite(float(m_ties["loss"]))
  assert abs(float(m_ties["loss"]) - float(m_plain["loss"])) > 1e-5


@pytest.mark.slow  # over 30 s on 2 cores; CI runs it in the slow suite
def test_consistency_with_accumulation_equals_one_big_batch():
  cfg = BertConfig(**{**WIDE.__dict__, "dropout_rate": 0.0, "attention_dropout_rate": 0.0})
  s1, step1 = _setup(K, cfg, consistency_weight=0.5)
  s4, step4 = _setup(K, cfg, grad_accum_steps=4, consistency_weight=0.5)
  s1, m1 = _two_steps(step1, s1)
  s4, m4 = _two_steps(step4, s4)
  _, plain = _setup(K, cfg)
  _, m_plain = _two_steps(plain, _setup(K, cfg)[0])
  assert float(m1["consistency_kl"]) > 1e-3  # a real term to get right...
  assert abs(float(m1["grad_norm"]) / float(m_plain["grad_norm"]) - 1) > 1e-3  # ...in the gradient
  np.testing.assert_allclose(m1["consistency_kl"], m4["consistency_kl"], rtol=1e-5)
  np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
  # Adam's first steps scale every gradient entry to ~lr, so near-zero entries amplify
  # rounding; the gradient norm above is the tight check of the KL's scaling.
  for a, b in zip(_leaves(s1), _leaves(s4)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_layerwise_step_compiles_once_and_learns():
  state, train_step = _setup(K, strategy="random", layerwise=True)
  traces = []

  def counted(state, batch):
    traces.append(1)
    return train_step(state, batch)

  step = jax.jit(counted, donate_argnums=0)
  losses = []
  for i in range(10):
    state, m = step(state, synthetic.mlm_batch(i % 2, B, S, P, CFG.vocab_size))
    losses.append(float(m["loss"]))
  assert len(traces) == 1 and losses[-1] < losses[0]
  idx = step_lib._keep_indices(  # pylint: disable=protected-access
      step_lib.DropSettings("random", K, synthetic.SPECIAL_IDS, layerwise=True),
      state.importance, BATCH, jax.random.PRNGKey(0), middle_layers=2)
  assert idx.shape == (2, B, K) and not np.array_equal(idx[0], idx[1])


# --- the loop: every option at once, no recompiles, exact resume mid-schedule ------------------

def _all_options(root):
  c = load("tiny", "random+layerwise+schedule+sctd")
  c.data.dataset_dir = str(root / "shared_data")
  c.token_drop.update(keep_schedule_stages=2, consistency_every=7)  # stages [32, 48] then full
  c.train.update(num_steps=40, log_every=2, eval_every=20, checkpoint_every=10,
                 keep_checkpoints=10, async_checkpoint=True)
  return c


@pytest.mark.slow  # over 30 s on 2 cores; CI runs it in the slow suite
def test_all_options_resume_mid_schedule_exactly(tmp_path):
  config = _all_options(tmp_path)
  ref_dir, workdir = str(tmp_path / "ref"), str(tmp_path / "preempted")
  ref = loop.train_and_evaluate(config, ref_dir)
  used = {step_plan.kind_at(config, s).name for s in range(40)}
  assert used == {"drop32", "drop32_sctd", "drop48", "drop48_sctd", "full"}
  assert all(ref["jit_cache_sizes"][name] == 1 for name in used)  # one compile per kind
  rows = metrics.read_metrics(os.path.join(ref_dir, "metrics.jsonl"))
  kl_steps = [r["step"] for r in rows if "consistency_kl" in r]
  assert kl_steps == [14, 28]  # the logged (every 2) consistency steps (every 7) before full

  sigterm_once_training(workdir)
  first = loop.train_and_evaluate(config, workdir)
  assert 2 <= first["step"] < 36  # stopped inside the schedule
  second = loop.train_and_evaluate(config, workdir)
  assert second["step"] == 40 and all(v <= 1 for v in second["jit_cache_sizes"].values())

  def final(d):
    return jax.tree_util.tree_leaves(final_state(config, d)[0])

  for a, b in zip(final(ref_dir), final(workdir)):
    np.testing.assert_array_equal(a, b)
  assert second["eval/loss"] == ref["eval/loss"]
