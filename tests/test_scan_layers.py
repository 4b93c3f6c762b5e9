"""model.scan_layers: the scanned encoder is the unrolled one with its blocks stacked."""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.model_setup import params_batch_keep
from tokendrop_jax import synthetic
from tokendrop_jax.model import token_drop
from tokendrop_jax.model.bert import BertForPretraining
from tokendrop_jax.model.config import BertConfig
from tokendrop_jax.model.encoder import to_scanned, to_unrolled

# 6 layers: split s = 2, so layers 0-1 (scanned), 2 (cross), 3-4 (scanned), 5 (last).
CFG = BertConfig(vocab_size=50, hidden_size=16, num_layers=6, num_heads=2, intermediate_size=32,
                 max_position=16, dropout_rate=0.1, attention_dropout_rate=0.1,
                 initializer_range=0.3, attention="einsum")
SCAN = dataclasses.replace(CFG, scan_layers=True)
B, S, P, KEEP = 3, 12, 3, 6


@pytest.fixture(scope="module")
def setup():
  params, batch, keep = params_batch_keep(CFG, B, S, P, KEEP)
  layerwise = jnp.stack([token_drop.select_kept(
      jax.random.normal(jax.random.PRNGKey(2 + j), (B, S)), batch["input_ids"],
      batch["input_mask"], synthetic.SPECIAL_IDS, KEEP) for j in range(3)])  # layers 2, 3, 4
  return params, batch, {"full": None, "drop": keep, "layerwise": layerwise}


def _scanned(params):
  return {**params, "bert": to_scanned(params["bert"], CFG)}


def _loss(cfg, params, batch, keep_idx, cls_layers):
  logits, cls = BertForPretraining(cfg).apply(
      {"params": params}, batch["input_ids"], batch["input_mask"], batch["token_type_ids"],
      batch["masked_lm_positions"], keep_idx, cls_layers=cls_layers)
  return jnp.sum(jax.nn.log_softmax(logits)[..., 0]) + jnp.sum(cls ** 2), (logits, cls)


def test_layouts_convert_both_ways_and_match_a_scanned_init(setup):
  params, batch, _ = setup
  scanned = _scanned(params)
  assert sorted(scanned["bert"]) == ["embeddings", "layer_2", "layer_5", "mid_layers",
                                     "pre_layers"]
  jax.tree.map(np.testing.assert_array_equal, {**params, "bert": to_unrolled(scanned["bert"], CFG)},
               params)
  init = nn.unbox(BertForPretraining(SCAN).init(
      jax.random.PRNGKey(0), batch["input_ids"], batch["input_mask"], batch["token_type_ids"],
      batch["masked_lm_positions"])["params"])
  shapes = lambda t: jax.tree.map(lambda x: x.shape, t)  # noqa: E731
  assert shapes(init) == shapes(scanned)
  assert init["bert"]["mid_layers"]["layer"]["output"]["kernel"].shape == (2, 32, 16)


def test_stacked_params_carry_the_layers_axis(setup):
  _, batch, _ = setup
  boxed = BertForPretraining(SCAN).init(
      jax.random.PRNGKey(0), batch["input_ids"], batch["input_mask"], batch["token_type_ids"],
      batch["masked_lm_positions"])["params"]
  kernel = boxed["bert"]["pre_layers"]["layer"]["intermediate"]["kernel"]
  assert kernel.names == ("layers", "embed", "mlp")


@pytest.mark.parametrize("mode", ["full", "drop", "layerwise"])
def test_scanned_equals_unrolled_outputs_and_gradients(setup, mode):
  """Every [CLS] state of the last 4 layers too (ScTD reads them): across both blocks."""
  params, batch, keeps = setup
  keep_idx = keeps[mode]
  (l0, (logits0, cls0)), g0 = jax.value_and_grad(_loss, argnums=1, has_aux=True)(
      CFG, params, batch, keep_idx, 4)
  (l1, (logits1, cls1)), g1 = jax.value_and_grad(_loss, argnums=1, has_aux=True)(
      SCAN, _scanned(params), batch, keep_idx, 4)
  np.testing.assert_allclose(logits1, logits0, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(cls1, cls0, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(l1, l0, atol=1e-4, rtol=1e-6)
  g1 = {**g1, "bert": to_unrolled(g1["bert"], CFG)}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), g1, g0)


@pytest.mark.slow
def test_remat_inside_the_scan_gives_the_same_gradients(setup):
  params, batch, keeps = setup
  g = [jax.grad(lambda p, c=c: _loss(c, p, batch, keeps["drop"], 1)[0])(_scanned(params))
       for c in (SCAN, dataclasses.replace(SCAN, remat="full"))]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4), *g)


@pytest.mark.slow
def test_dropout_is_drawn_per_layer_in_the_scan(setup):
  """split_rngs: each scanned layer draws its own dropout bits (not one mask for all)."""
  params, batch, _ = setup
  out = [BertForPretraining(SCAN).apply(
      {"params": _scanned(params)}, batch["input_ids"], batch["input_mask"],
      batch["token_type_ids"], batch["masked_lm_positions"], None, deterministic=False,
      rngs={"dropout": jax.random.PRNGKey(seed)}) for seed in (0, 0, 1)]
  np.testing.assert_array_equal(out[0], out[1])
  assert not np.allclose(out[0], out[2])


def test_export_of_a_scanned_model_is_the_unrolled_models(setup):
  from tokendrop_jax.hf import params as hf_params
  params, _, _ = setup
  a, b = hf_params.hf_state_dict(params, CFG), hf_params.hf_state_dict(_scanned(params), SCAN)
  assert sorted(a) == sorted(b)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_a_resume_with_the_other_layout_is_refused_naming_the_field(tmp_path):
  from tokendrop_jax.training import loop, workdir as workdir_lib
  from tests.test_config import load
  c = load("tiny")
  workdir = str(tmp_path / "run")
  workdir_lib.create(workdir)
  workdir_lib.write_config(c, workdir)
  (tmp_path / "run" / "checkpoints" / "5").mkdir(parents=True)
  c.model.scan_layers = True
  with pytest.raises(ValueError, match=r"model.scan_layers=True but the run .* with False"):
    workdir_lib.check_resume(c, workdir, loop.RESUME_FIELDS, loop.RESUME_ADDED,
                             loop.RESUME_CANONICAL)
