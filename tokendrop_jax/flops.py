"""Analytic FLOPs of a BERT pretraining step, full or token-dropping.

Counts matmul FLOPs (2 per multiply-add), the quantity MFU is defined on.
Embedding lookups, softmax, LayerNorm and the selection itself are ignored:
they are memory-bound and a few percent at most. A train step is taken as
3x the forward pass (backward = 2x forward), the usual convention. MFU
divides them by the device's peak (`peak_flops_per_device`).
"""
from __future__ import annotations

import re

from tokendrop_jax.model.config import BertConfig


def layer_flops(cfg: BertConfig, n_queries: int, n_keys: int) -> int:
  """Forward FLOPs of one transformer layer for one sequence."""
  h, i = cfg.hidden_size, cfg.intermediate_size
  q_proj = 2 * n_queries * h * h
  kv_proj = 2 * 2 * n_keys * h * h
  attention = 2 * 2 * n_queries * n_keys * h  # scores and weighted sum
  out_proj = 2 * n_queries * h * h
  ffn = 2 * 2 * n_queries * h * i
  return q_proj + kv_proj + attention + out_proj + ffn


def layer_rows(cfg: BertConfig, seq_len: int, keep_tokens: int | None = None,
               layerwise: bool = False) -> list[tuple[int, int]]:
  """(queries, keys) of each layer for one sequence; `keep_tokens=None` is the full model.

  `layerwise`: random-LTD's per-layer subsets, with no cross layer.
  """
  s, last = cfg.split_layer, cfg.num_layers - 1
  rows = []
  for layer in range(cfg.num_layers):
    if keep_tokens is None or layer < s or layer == last:
      rows.append((seq_len, seq_len))
    elif layer == s and not layerwise:
      rows.append((keep_tokens, seq_len))  # cross layer
    else:
      rows.append((keep_tokens, keep_tokens))
  return rows


def forward_flops(cfg: BertConfig, seq_len: int, num_predictions: int,
                  keep_tokens: int | None = None, layerwise: bool = False) -> int:
  """Forward FLOPs for one sequence; `keep_tokens=None` is the full model (see `layer_rows`)."""
  total = sum(layer_flops(cfg, q, k) for q, k in layer_rows(cfg, seq_len, keep_tokens, layerwise))
  h = cfg.hidden_size
  mlm_head = 2 * num_predictions * h * h + 2 * num_predictions * h * cfg.vocab_size
  return total + mlm_head


def train_step_flops(cfg: BertConfig, batch_size: int, seq_len: int, num_predictions: int,
                     keep_tokens: int | None = None, layerwise: bool = False,
                     consistency: bool = False, consistency_backward: bool = False) -> int:
  """FLOPs of one training step (forward + backward) for the whole global batch.

  `consistency`: ScTD's extra full-model forward (a stop-gradient target: no
  backward); with `consistency_backward` (ScTD as its authors define it) the
  gradient flows through it too, tripling its cost.
  """
  step = 3 * batch_size * forward_flops(cfg, seq_len, num_predictions, keep_tokens, layerwise)
  if consistency:
    step += (3 if consistency_backward else 1) * batch_size * forward_flops(cfg, seq_len, 1)
  return step


def drop_flops_ratio(cfg: BertConfig, seq_len: int, num_predictions: int, keep_tokens: int) -> float:
  """Analytic cost of the token-drop step over the full step."""
  return (forward_flops(cfg, seq_len, num_predictions, keep_tokens)
          / forward_flops(cfg, seq_len, num_predictions))


# Peak dense bf16 FLOP/s per device (vendor numbers, no sparsity).
PEAK_FLOPS: dict[str, float] = {
    "TPU v3": 123e12,
    "TPU v4": 275e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6e": 918e12,
    "A100": 312e12,
    "H100": 989e12,  # SXM; PCIe is 756e12.
    "H100 PCIe": 756e12,
    "H200": 989e12,
}

# (regex on lower-cased device_kind, PEAK_FLOPS key); first match wins.
_PATTERNS = (
    (r"v5\s*lite|v5e|v5litepod", "TPU v5e"),
    (r"v6\s*lite|v6e", "TPU v6e"),
    (r"v5p|tpu v5\b", "TPU v5p"),
    (r"tpu v4|\bv4\b", "TPU v4"),
    (r"tpu v3|\bv3\b", "TPU v3"),
    (r"h100.*pcie", "H100 PCIe"),
    (r"h100", "H100"),
    (r"h200", "H200"),
    (r"a100", "A100"),
)


def peak_flops_per_device(device_kind: str,
                          override: float | None = None) -> float | None:
  """Peak FLOP/s of one device: `override` if given, else looked up, else None.

  Matches `jax.devices()[0].device_kind`, e.g. 'TPU v4', 'TPU v5 lite',
  'NVIDIA A100-SXM4-40GB', 'NVIDIA H100 80GB HBM3'. Unknown (CPU) -> None.
  """
  if override:
    return float(override)
  kind = (device_kind or "").lower()
  for pattern, key in _PATTERNS:
    if re.search(pattern, kind):
      return PEAK_FLOPS[key]
  return None


def mfu(flops_per_step: float, step_time_s: float, n_devices: int,
        peak: float | None) -> float | None:
  """Model FLOPs utilisation in [0, 1]; None when the peak is unknown."""
  if not peak or step_time_s <= 0 or n_devices <= 0:
    return None
  return flops_per_step / (step_time_s * n_devices * peak)
