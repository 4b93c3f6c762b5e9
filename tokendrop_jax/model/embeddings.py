"""The input embeddings (word + position + token type) and the table lookup they use.

Apart from the layers because the MLM head reads the word table back (the tied
decoder) and the lookup has its own sharding concern (FSDP's gather).
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokendrop_jax.model.config import BertConfig
from tokendrop_jax.model.layers import dropout, layer_norm, param_init

Array = jax.Array


def lookup(embed: nn.Embed, ids: Array, vocab_axis: Optional[str]) -> Array:
  """`embed(ids)` [*ids.shape, hidden], with the table's `embed` axis gathered first.

  That is FSDP's all-gather of a weight before its use. Left to itself, XLA may
  instead all-gather the ids of the global batch to look them up in the
  fsdp-sharded table, so each device would embed every row.

  Rows are taken from the table in its param dtype and cast after: the backward
  pass of a take is a scatter-add of every occurrence into the table, and in
  bfloat16 that sum stalls (4096 occurrences of [MASK] add up to 256) and runs
  as contended compare-and-swap loops on a GPU. The forward values are the same.
  """
  table = nn.with_logical_constraint(embed.embedding, (vocab_axis, None))  # [vocab, hidden]
  (rows,) = embed.promote_dtype(jnp.take(table, ids, axis=0), dtype=embed.dtype, inexact=False)
  return rows  # [*ids.shape, hidden]


class Embeddings(nn.Module):
  """ids [batch, seq] -> word + position + token type, LayerNorm, dropout [batch, seq, hidden]."""
  cfg: BertConfig

  def setup(self):
    cfg = self.cfg
    self.word = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                         embedding_init=param_init(cfg, ("vocab", "embed")))
    self.position = nn.Embed(cfg.max_position, cfg.hidden_size, param_dtype=cfg.param_dtype,
                             embedding_init=param_init(cfg, (None, "embed")))
    self.token_type = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, param_dtype=cfg.param_dtype,
                               embedding_init=param_init(cfg, (None, "embed")))
    self.layer_norm = layer_norm(cfg)

  def __call__(self, input_ids: Array, token_type_ids: Array, deterministic: bool) -> Array:
    seq_len = input_ids.shape[1]
    x = (lookup(self.word, input_ids, "vocab") + self.position(jnp.arange(seq_len))[None]
         + lookup(self.token_type, token_type_ids, None))  # [batch, seq, hidden]
    x = self.layer_norm(x.astype(self.cfg.dtype))
    return dropout(self, x, self.cfg.dropout_rate, deterministic)

  def attend(self, x: Array) -> Array:
    """Logits against the word embeddings (the tied MLM decoder)."""
    return self.word.attend(x)
