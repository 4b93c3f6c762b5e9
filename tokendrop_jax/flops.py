"""Analytic FLOPs of a BERT pretraining step, full or token-dropping.

Counts matmul FLOPs (2 per multiply-add), the quantity MFU is defined on.
Embedding lookups, softmax, LayerNorm and the selection itself are ignored:
they are memory-bound and a few percent at most. A train step is taken as
3x the forward pass (backward = 2x forward), the usual convention.
"""
from __future__ import annotations

from tokendrop_jax.model.bert import BertConfig


def layer_flops(cfg: BertConfig, n_queries: int, n_keys: int) -> int:
  """Forward FLOPs of one transformer layer for one sequence."""
  h, i = cfg.hidden_size, cfg.intermediate_size
  q_proj = 2 * n_queries * h * h
  kv_proj = 2 * 2 * n_keys * h * h
  attention = 2 * 2 * n_queries * n_keys * h  # scores and weighted sum
  out_proj = 2 * n_queries * h * h
  ffn = 2 * 2 * n_queries * h * i
  return q_proj + kv_proj + attention + out_proj + ffn


def forward_flops(cfg: BertConfig, seq_len: int, num_predictions: int,
                  keep_tokens: int | None = None, layerwise: bool = False) -> int:
  """Forward FLOPs for one sequence; `keep_tokens=None` is the full model.

  `layerwise`: random-LTD's per-layer subsets, with no cross layer.
  """
  s, last = cfg.split_layer, cfg.num_layers - 1
  total = 0
  for layer in range(cfg.num_layers):
    if keep_tokens is None or layer < s or layer == last:
      total += layer_flops(cfg, seq_len, seq_len)
    elif layer == s and not layerwise:
      total += layer_flops(cfg, keep_tokens, seq_len)  # cross layer
    else:
      total += layer_flops(cfg, keep_tokens, keep_tokens)
  h = cfg.hidden_size
  mlm_head = 2 * num_predictions * h * h + 2 * num_predictions * h * cfg.vocab_size
  return total + mlm_head


def train_step_flops(cfg: BertConfig, batch_size: int, seq_len: int, num_predictions: int,
                     keep_tokens: int | None = None, layerwise: bool = False,
                     consistency: bool = False) -> int:
  """FLOPs of one training step (forward + backward) for the whole global batch.

  `consistency`: ScTD's extra full-model forward (a stop-gradient target: no backward).
  """
  step = 3 * batch_size * forward_flops(cfg, seq_len, num_predictions, keep_tokens, layerwise)
  if consistency:
    step += batch_size * forward_flops(cfg, seq_len, 1)
  return step


def drop_flops_ratio(cfg: BertConfig, seq_len: int, num_predictions: int, keep_tokens: int) -> float:
  """Analytic cost of the token-drop step over the full step."""
  return (forward_flops(cfg, seq_len, num_predictions, keep_tokens)
          / forward_flops(cfg, seq_len, num_predictions))
