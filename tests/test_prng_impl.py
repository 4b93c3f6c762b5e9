"""train.prng_impl: every PRNG implementation trains and resumes bit-exactly; threefry
is the stream runs had before the option (same key bits, same first steps)."""
import os

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import pytest

from tests.test_config import load
from tests.test_train_loop import final_state, losses, tiny
from tokendrop_jax import config_checks, config_lib, importance
from tokendrop_jax.model.bert import BertForPretraining
from tokendrop_jax.model.config import BertConfig
from tokendrop_jax.training import loop, optim, preemption
from tokendrop_jax.training import state as state_lib

KEY_WORDS = {"threefry": 2, "rbg": 4, "unsafe_rbg": 4}  # uint32 words of a key's data


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return tmp_path_factory.mktemp("prng")


def _config(root, impl):
  c = tiny(root, num_steps=6, log_every=2, eval_every=6, checkpoint_every=2)
  c.train.prng_impl = impl
  return c


@pytest.mark.parametrize("impl", [pytest.param("threefry", marks=pytest.mark.slow), "rbg",
                                  pytest.param("unsafe_rbg", marks=pytest.mark.slow)])
def test_stopped_and_resumed_run_equals_the_uninterrupted_one(root, impl, monkeypatch):
  """Stopped after step 3 through the preemption path (save, exit), then resumed."""
  config = _config(root, impl)
  ref_dir, workdir = str(root / f"{impl}_ref"), str(root / f"{impl}_stopped")
  one = jax.devices()[:1]  # compiles in a fraction of the 8-device time
  ref = loop.train_and_evaluate(config, ref_dir, devices=one)
  with monkeypatch.context() as m:
    m.setattr(preemption.PreemptionGuard, "should_stop", lambda self, step: step == 3)
    assert loop.train_and_evaluate(config, workdir, devices=one)["step"] == 3
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "3"]
  second = loop.train_and_evaluate(config, workdir, devices=one)
  assert second["step"] == 6 and second["eval/loss"] == ref["eval/loss"]
  ref_state, _ = final_state(config, ref_dir)
  state, _ = final_state(config, workdir)
  assert state.rng.shape == (KEY_WORDS[impl],) and state.rng.dtype == np.uint32
  for a, b in zip(jax.tree_util.tree_leaves(ref_state), jax.tree_util.tree_leaves(state)):
    np.testing.assert_array_equal(a, b)
  assert losses(workdir) == losses(ref_dir) and len(losses(ref_dir)) == 3


CFG = BertConfig(vocab_size=64, hidden_size=16, num_layers=4, num_heads=2, intermediate_size=32,
                 max_position=16)
OPTIM = ml_collections.ConfigDict(dict(learning_rate=1e-2, weight_decay=0.01, warmup_steps=2,
                                       b1=0.9, b2=0.999, eps=1e-6, grad_clip_norm=1.0))


def _init_state(key):
  """A small model's fresh train state from `key` (typed, or raw as before the option)."""
  model = BertForPretraining(CFG)
  optimizer, _ = optim.make_optimizer(OPTIM, 100)
  imp0 = importance.init_importance("loss_ema", CFG.vocab_size)
  init = state_lib.make_state_init(model, optimizer, 16, 3)
  return jax.device_get(jax.jit(lambda r: nn.unbox(init(r, imp0)))(key))


@pytest.mark.slow
def test_threefry_is_the_stream_from_before_and_the_others_differ():
  """threefry gives the state and step keys of the raw PRNGKey path that every run took
  before the option, bit for bit, so its steps are too; rbg and unsafe_rbg are other
  streams (other init, other dropout masks)."""
  before = _init_state(jax.random.PRNGKey(0))
  after = {impl: _init_state(state_lib.base_key(0, impl)) for impl in KEY_WORDS}
  for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after["threefry"])):
    np.testing.assert_array_equal(a, b)
  for step in (0, 1, 1234):  # the train steps' keys: fold_in(state.rng, step)
    np.testing.assert_array_equal(
        jax.random.key_data(state_lib.step_key(after["threefry"].rng, step, "threefry")),
        jax.random.fold_in(before.rng, step))
  for impl, words in KEY_WORDS.items():
    assert after[impl].rng.shape == (words,) and after[impl].rng.dtype == np.uint32
  kernels = {impl: s.params["bert"]["layer_0"]["intermediate"]["kernel"]
             for impl, s in after.items()}
  assert not np.array_equal(kernels["threefry"], kernels["rbg"])
  assert not np.array_equal(kernels["rbg"], kernels["unsafe_rbg"])


def test_step_key_reads_the_bits_under_the_impl():
  for impl in KEY_WORDS:
    bits = state_lib.key_bits(state_lib.base_key(7, impl))
    key = state_lib.step_key(bits, 3, impl)
    assert key.dtype == jax.random.key(0, impl=config_lib.PRNG_IMPLS[impl]).dtype
    expected = jax.random.fold_in(jax.random.key(7, impl=config_lib.PRNG_IMPLS[impl]), 3)
    np.testing.assert_array_equal(jax.random.key_data(key), jax.random.key_data(expected))


@pytest.mark.parametrize("config", [load("tiny"), config_lib.glue_config("sst2")])
def test_unknown_impl_is_refused_naming_the_field(config):
  config.train.prng_impl = "philox"
  if config_lib.is_glue(config):
    config.init_from = ""
  with pytest.raises(ValueError, match=r"train.prng_impl must be one of .*'philox'"):
    config_checks.validate(config)
