"""The two models the jobs train: the encoder under the MLM head (pretraining) or
under the pooler and classifier (GLUE fine-tuning).

Their parameter trees are {"bert": encoder, "mlm": head} and {"bert": encoder,
"pooler", "classifier"}: checkpoints and the Hugging Face export rely on these names.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokendrop_jax.model import token_drop
from tokendrop_jax.model.config import ACTIVATIONS, BertConfig
from tokendrop_jax.model.embeddings import Embeddings
from tokendrop_jax.model.encoder import BertEncoder
from tokendrop_jax.model.layers import dropout, layer_norm, param_init

Array = jax.Array


class MlmHead(nn.Module):
  """Transform + LayerNorm + decoder tied to the word embeddings (+ output bias)."""
  cfg: BertConfig

  @nn.compact
  def __call__(self, x: Array, embeddings: Embeddings) -> Array:
    cfg = self.cfg
    x = nn.Dense(cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                 kernel_init=param_init(cfg, ("embed", "mlp")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
                 name="transform")(x)
    x = layer_norm(cfg, "transform_norm")(ACTIVATIONS[cfg.hidden_act](x))
    bias = self.param("output_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                      (cfg.vocab_size,), cfg.param_dtype)
    logits = embeddings.attend(x) + bias
    return logits.astype(jnp.float32)  # [..., vocab]


class BertForPretraining(nn.Module):
  """Encoder + MLM head on the masked positions only (static count P)."""
  cfg: BertConfig

  def setup(self):
    self.bert = BertEncoder(self.cfg)
    self.mlm = MlmHead(self.cfg)

  def __call__(self, input_ids: Array, input_mask: Array, token_type_ids: Array,
               masked_lm_positions: Array, keep_idx: Optional[Array] = None,
               deterministic: bool = True, cls_layers: int = 0):
    """-> logits [batch, P, vocab]; with `cls_layers`, (logits, cls [n, batch, hidden])."""
    x = self.bert(input_ids, input_mask, token_type_ids, keep_idx, deterministic, cls_layers)
    x, cls = x if cls_layers else (x, None)
    x = token_drop.gather_tokens(x, masked_lm_positions)  # [batch, P, hidden]
    logits = self.mlm(x, self.bert.embeddings)  # [batch, P, vocab]
    return (logits, cls) if cls_layers else logits


class BertForSequenceClassification(nn.Module):
  """Full encoder, pooled [CLS] = tanh(dense(h[:, 0])), then a linear classifier."""
  cfg: BertConfig
  num_labels: int

  @nn.compact
  def __call__(self, input_ids: Array, input_mask: Array, token_type_ids: Array,
               deterministic: bool = True) -> Array:
    cfg = self.cfg
    x = BertEncoder(cfg, name="bert")(input_ids, input_mask, token_type_ids, None, deterministic)
    cls = nn.with_logical_constraint(x[:, 0], ("batch", "embed"))  # [batch, hidden], rows stay local
    pooled = nn.tanh(nn.Dense(cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                              kernel_init=param_init(cfg, ("embed", "mlp")),
                              bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
                              name="pooler")(cls))
    pooled = nn.with_logical_constraint(pooled, ("batch", "mlp"))
    pooled = dropout(self, pooled, cfg.dropout_rate, deterministic)
    logits = nn.Dense(self.num_labels, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      kernel_init=param_init(cfg, ("mlp", None)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                      name="classifier")(pooled)
    return logits.astype(jnp.float32)  # [batch, num_labels]
