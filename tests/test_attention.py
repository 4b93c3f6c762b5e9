"""model.attention: every kernel that runs on this CPU equals einsum; the others are refused.

splash (Pallas, TPU) runs here in Pallas's interpret mode, which executes the
same kernel code on the CPU; it is checked on one device and under shard_map
on an 8-device mesh.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokendrop_jax import config_checks, partitioning
from tokendrop_jax.model import attention
from tokendrop_jax.model.bert import BertForPretraining
from tokendrop_jax.model.config import BertConfig
from tokendrop_jax.training import sharding
from tests.model_setup import params_batch_keep
from tests.test_config import load

# Lengths are multiples of splash's 128-lane blocks: seq 256, 128 kept.
CFG = BertConfig(vocab_size=64, hidden_size=32, num_layers=4, num_heads=2, intermediate_size=64,
                 max_position=256, dropout_rate=0.0, attention_dropout_rate=0.0,
                 initializer_range=0.3, attention="einsum")
B, S, P, KEEP = 8, 256, 4, 128


@pytest.fixture(scope="module")
def setup():
  return params_batch_keep(CFG, B, S, P, KEEP)


def _loss(impl, params, batch, keep_idx):
  model = BertForPretraining(dataclasses.replace(CFG, attention=impl))
  logits = model.apply({"params": params}, batch["input_ids"], batch["input_mask"],
                       batch["token_type_ids"], batch["masked_lm_positions"], keep_idx)
  logp = jax.nn.log_softmax(logits)
  nll = -jnp.take_along_axis(logp, batch["masked_lm_ids"][..., None], -1)[..., 0]
  return jnp.sum(nll * batch["masked_lm_weights"]), logits


def _value_and_grads(impl, params, batch, keep_idx):
  (loss, logits), grads = jax.value_and_grad(_loss, argnums=1, has_aux=True)(
      impl, params, batch, keep_idx)
  return loss, logits, grads


@pytest.fixture
def interpret(monkeypatch):
  monkeypatch.setattr(attention, "SPLASH_INTERPRET", True)


@pytest.mark.parametrize("impl", ["xla", "splash"])
@pytest.mark.parametrize("drop", [pytest.param(False, marks=pytest.mark.slow), True])
def test_kernel_equals_einsum_forward_and_gradients(setup, interpret, impl, drop):
  """Token dropping (full layers, then the cross layer: 128 queries over 256 keys, then
  128 kept tokens); the plain model in the slow suite."""
  params, batch, keep_idx = setup
  keep_idx = keep_idx if drop else None
  ref = _value_and_grads("einsum", params, batch, keep_idx)
  got = _value_and_grads(impl, params, batch, keep_idx)
  np.testing.assert_allclose(got[1], ref[1], atol=1e-5, rtol=1e-5)  # logits
  np.testing.assert_allclose(got[0], ref[0], atol=1e-5, rtol=1e-5)  # loss
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4),
               got[2], ref[2])


def test_splash_under_shard_map_on_a_mesh_equals_einsum(setup, interpret):
  """Rows on data=4, heads on tensor=2: each device runs the kernel on its block."""
  params, batch, keep_idx = setup
  mesh = sharding.make_mesh(4, 1, 2)
  rules = partitioning.rules_from_config(None)
  sharded = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    got = jax.jit(lambda p, b, k: _loss("splash", p, b, k)[1])(params, sharded, keep_idx)
  ref = _loss("einsum", params, batch, keep_idx)[1]
  np.testing.assert_allclose(got, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,platform,dtype,rate,expected", [
    ("auto", "cpu", "float32", 0.0, "einsum"),
    ("auto", "gpu", "bfloat16", 0.0, "cudnn"),
    ("auto", "gpu", "float32", 0.0, "einsum"),
    ("auto", "gpu", "bfloat16", 0.1, "einsum"),  # only einsum drops attention probabilities
    ("auto", "tpu", "bfloat16", 0.0, "splash"),
    ("xla", "tpu", "float32", 0.0, "xla"),
])
def test_auto_picks_the_platforms_kernel(name, platform, dtype, rate, expected):
  assert attention.resolve(name, platform, dtype, rate) == expected
  attention.check(name, platform, dtype, rate)  # and it may run there


@pytest.mark.parametrize("fields,match", [
    ({"model.attention": "cudnn", "model.attention_dropout_rate": 0.0},
     r"model.attention='cudnn' needs a GPU \(this is a CPU\)"),
    ({"model.attention": "splash", "model.attention_dropout_rate": 0.0},
     r"model.attention='splash' needs a TPU"),
    ({"model.attention": "xla"}, r"has no attention dropout, but model.attention_dropout_rate=0.1"),
])
def test_a_kernel_this_machine_cannot_run_is_refused_before_anything_runs(tmp_path, fields,
                                                                           match):
  from tokendrop_jax.training import loop
  c = load("tiny")
  for k, v in fields.items():
    section, name = k.split(".")
    c[section][name] = v
  with pytest.raises(ValueError, match=match):
    loop.train_and_evaluate(c, str(tmp_path / "run"))
  assert not (tmp_path / "run" / "config.json").exists()


def test_unknown_kernel_and_cudnn_in_f32_are_refused_naming_the_field():
  c = load("tiny")
  c.model.attention = "flash"
  with pytest.raises(ValueError, match=r"model.attention must be one of"):
    config_checks.validate(c)
  with pytest.raises(ValueError, match=r"model.attention='cudnn' runs in bfloat16 or float16"):
    attention.check("cudnn", "gpu", "float32", 0.0)


def test_splash_lengths_must_fit_its_blocks(interpret):
  q = jnp.zeros((1, 2, 200, 8))
  with pytest.raises(ValueError, match="multiples of 128; got 200"):
    attention.fused("splash", q, q, q, jnp.ones((1, 200)))


@pytest.mark.parametrize("impl", ["xla", "splash"])
@pytest.mark.slow
def test_kernel_matches_the_numpy_reference(setup, interpret, impl):
  """The loop reference of the paper's model (tests/reference_bert.py), plain and dropped."""
  from tests import reference_bert
  params, batch, keep_idx = setup
  model = BertForPretraining(dataclasses.replace(CFG, attention=impl))
  for keep in (None, keep_idx):
    logits = np.asarray(model.apply({"params": params}, batch["input_ids"], batch["input_mask"],
                                    batch["token_type_ids"], batch["masked_lm_positions"], keep))
    for b in range(2):
      args = [batch[k][b] for k in ("input_ids", "input_mask", "token_type_ids",
                                    "masked_lm_positions")]
      ref = reference_bert.mlm_logits(params, CFG, *args,
                                      kept=None if keep is None else np.asarray(keep[b]))
      np.testing.assert_allclose(logits[b], ref, atol=1e-4, rtol=1e-4)


def test_cudnn_gets_a_mask_of_the_full_query_by_key_shape(setup, monkeypatch):
  """cuDNN takes the mask as a bias and checks that it is [batch, 1, q_len, kv_len]: on an
  H200 a [batch, 1, 1, kv_len] mask failed with 'Bias must have same seq length as QKV,
  got 1 and 128'. Here the call is captured and run with XLA's kernel (no GPU): the mask
  has cuDNN's shape and the context equals einsum's, with the cross layer's 128 kept
  queries over 256 keys."""
  shapes, real = [], jax.nn.dot_product_attention

  def capture(q, k, v, mask=None, implementation=None, **kw):
    shapes.append((implementation, q.shape, k.shape, mask.shape))
    return real(q, k, v, mask=mask, implementation="xla", **kw)

  monkeypatch.setattr(jax.nn, "dot_product_attention", capture)
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(2, 2, 128, 16)), jnp.float32)  # [b, heads, q_len, d]
  kv = jnp.asarray(rng.normal(size=(2, 2, 256, 16)), jnp.float32)
  key_mask = jnp.asarray(np.arange(256)[None] < np.array([[200], [256]]), jnp.int32)
  got = attention.fused("cudnn", q, kv, kv, key_mask)
  assert shapes == [("cudnn", (2, 128, 2, 16), (2, 256, 2, 16), (2, 1, 128, 256))]
  scores = jnp.einsum("bhqd,bhkd->bhqk", q, kv) / 4.0 + jnp.where(key_mask > 0, 0, -1e9)[:, None,
                                                                                         None]
  want = jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(scores, -1), kv)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
