"""A slow, obviously-correct NumPy BERT with token dropping, one example at a time.

Written with explicit loops over query tokens and heads, from the method's
statement (README, "The method, and where it lives"), so that it shares no code
with `tokendrop_jax.model`.
"""
import math

import numpy as np


def _ln(x, p, eps):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def _gelu(x):
  return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def layer(p, x_q, x_kv, key_mask, eps):
  """x_q [q, H] attends to the rows of x_kv [n, H] whose key_mask is 1."""
  a = p["attention"]
  n_heads, head_dim = a["query"]["bias"].shape
  ctx = np.zeros((x_q.shape[0], n_heads, head_dim))
  for i in range(x_q.shape[0]):
    for h in range(n_heads):
      q = x_q[i] @ a["query"]["kernel"][:, h] + a["query"]["bias"][h]
      keys = [j for j in range(x_kv.shape[0]) if key_mask[j]]
      scores = np.array([q @ (x_kv[j] @ a["key"]["kernel"][:, h] + a["key"]["bias"][h])
                         for j in keys]) / math.sqrt(head_dim)
      w = np.exp(scores - scores.max())
      w /= w.sum()
      for wj, j in zip(w, keys):
        ctx[i, h] += wj * (x_kv[j] @ a["value"]["kernel"][:, h] + a["value"]["bias"][h])
  attn = np.einsum("qhd,hde->qe", ctx, a["out_kernel"]) + a["out_bias"]
  x = _ln(x_q + attn, p["attention_norm"], eps)
  hidden = _gelu(x @ p["intermediate"]["kernel"] + p["intermediate"]["bias"])
  return _ln(x + hidden @ p["output"]["kernel"] + p["output"]["bias"], p["output_norm"], eps)


def keep_set(scores, ids, mask, special_ids, keep):
  """Kept positions: specials first, then by score (ties: lower position), padding last."""
  order = sorted(range(len(ids)), key=lambda j: (
      0 if mask[j] and ids[j] in special_ids else (1 if mask[j] else 2), -scores[j], j))
  return sorted(order[:keep])


def mlm_logits(params, cfg, ids, mask, token_types, positions, kept=None, kept_per_layer=None):
  """MLM logits [P, vocab] for one example; `kept=None` runs the full model.

  `kept_per_layer`: layer-wise dropping, one kept list per middle layer s..L-2.
  """
  p = {k: np.asarray(v, np.float64) if not isinstance(v, dict) else v for k, v in params.items()}
  to64 = lambda t: {k: to64(v) if isinstance(v, dict) else np.asarray(v, np.float64)
                    for k, v in t.items()}
  p = to64(params)
  bert, eps = p["bert"], cfg.layer_norm_eps
  emb = bert["embeddings"]
  x = (emb["word"]["embedding"][ids] + emb["position"]["embedding"][np.arange(len(ids))]
       + emb["token_type"]["embedding"][token_types])
  x = _ln(x, emb["layer_norm"], eps)
  layers = [bert[f"layer_{i}"] for i in range(cfg.num_layers)]
  if kept_per_layer is not None:
    s, last = cfg.num_layers // 2 - 1, cfg.num_layers - 1
    for lp in layers[:s]:
      x = layer(lp, x, x, mask, eps)
    for lp, kept_j in zip(layers[s:last], kept_per_layer, strict=True):
      x = x.copy()
      x[kept_j] = layer(lp, x[kept_j], x[kept_j], mask[kept_j], eps)  # the rest skip the layer
    x = layer(layers[last], x, x, mask, eps)
  elif kept is None:
    for lp in layers:
      x = layer(lp, x, x, mask, eps)
  else:
    s, last = cfg.num_layers // 2 - 1, cfg.num_layers - 1
    for lp in layers[:s]:
      x = layer(lp, x, x, mask, eps)
    h = layer(layers[s], x[kept], x, mask, eps)             # cross: kept queries, all keys
    for lp in layers[s + 1:last]:
      h = layer(lp, h, h, mask[kept], eps)                  # kept tokens only
    merged = x.copy()                                       # dropped: layer s-1's output
    merged[kept] = h                                        # kept: layer L-2's output
    x = layer(layers[last], merged, merged, mask, eps)
  m = p["mlm"]
  t = _ln(_gelu(x[positions] @ m["transform"]["kernel"] + m["transform"]["bias"]),
          m["transform_norm"], eps)
  return t @ emb["word"]["embedding"].T + m["output_bias"]
