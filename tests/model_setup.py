"""A model's params, a synthetic MLM batch and a kept set: what the model tests start from."""
import flax.linen as nn
import jax

from tokendrop_jax import synthetic
from tokendrop_jax.model import token_drop
from tokendrop_jax.model.bert import BertForPretraining


def params_batch_keep(cfg, batch_size: int, seq_len: int, num_predictions: int, keep: int):
  """(unboxed params, batch with 40% padding, keep_idx [batch, keep] from random scores)."""
  batch = synthetic.mlm_batch(0, batch_size, seq_len, num_predictions, cfg.vocab_size,
                              pad_fraction=0.4)
  params = nn.unbox(BertForPretraining(cfg).init(
      jax.random.PRNGKey(0), batch["input_ids"], batch["input_mask"], batch["token_type_ids"],
      batch["masked_lm_positions"])["params"])
  scores = jax.random.normal(jax.random.PRNGKey(1), (batch_size, seq_len))
  keep_idx = token_drop.select_kept(scores, batch["input_ids"], batch["input_mask"],
                                    synthetic.SPECIAL_IDS, keep)
  return params, batch, keep_idx
