"""Our param tree <-> Hugging Face `BertForMaskedLM` tensors, through one table.

Export (`hf_state_dict`) and import (`params_from_hf`) both walk `param_table`,
so the two directions cannot disagree on a name, a shape or a transpose, and
import -> export gives back the same tensors bit for bit.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np

from tokendrop_jax.hf.bert_config import HF_CONFIG
from tokendrop_jax.model.config import BertConfig

# Tensors a checkpoint may have that our model has no use for (pooler, NSP head,
# buffers); the tied decoder is checked against what it is tied to.
_UNUSED = ("bert.pooler.dense.weight", "bert.pooler.dense.bias", "cls.seq_relationship.weight",
           "cls.seq_relationship.bias", "bert.embeddings.position_ids")
_DECODER = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias"}


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One tensor of Hugging Face's `BertForMaskedLM` and the param it is.

  torch Linear weights are [out, in], the transpose of Flax kernels (`linear`);
  the per-head projections [hidden, heads, head_dim] flatten to heads*head_dim,
  the order of HF's `transpose_for_scores`. Export and import both read this
  table, so the two directions cannot disagree.
  """
  hf: str                       # e.g. bert.encoder.layer.0.attention.self.query.weight
  path: tuple[str, ...]         # ours, in the unrolled param tree
  shape: tuple[int, ...]        # ours
  hf_shape: tuple[int, ...]
  linear: bool = False          # a torch Linear weight: [out, in]

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    return x.reshape(self.hf_shape[::-1]).T if self.linear else x.reshape(self.hf_shape)

  def from_hf(self, x: np.ndarray) -> np.ndarray:
    return x.T.reshape(self.shape) if self.linear else x.reshape(self.shape)


def param_table(cfg: BertConfig) -> list[Tensor]:
  """Every `BertForMaskedLM` tensor we have, in export order. The decoder weight
  and bias are tied in HF (to the word embeddings and `cls.predictions.bias`),
  so they are not in it."""
  h, nh, hd, v = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.vocab_size
  out = []

  def norm(prefix, *path):
    out.append(Tensor(f"{prefix}.weight", (*path, "scale"), (h,), (h,)))
    out.append(Tensor(f"{prefix}.bias", (*path, "bias"), (h,), (h,)))

  def dense(prefix, *path, kernel_shape, bias_shape):
    n_out = int(np.prod(bias_shape))
    n_in = int(np.prod(kernel_shape)) // n_out
    out.append(Tensor(f"{prefix}.weight", (*path, "kernel"), kernel_shape, (n_out, n_in),
                      linear=True))
    out.append(Tensor(f"{prefix}.bias", (*path, "bias"), bias_shape, (n_out,)))

  emb = ("bert", "embeddings")
  for hf, ours, rows in (("word", "word", v), ("position", "position", cfg.max_position),
                         ("token_type", "token_type", cfg.type_vocab_size)):
    out.append(Tensor(f"bert.embeddings.{hf}_embeddings.weight", (*emb, ours, "embedding"),
                      (rows, h), (rows, h)))
  norm("bert.embeddings.LayerNorm", *emb, "layer_norm")
  for i in range(cfg.num_layers):
    ours, hf = ("bert", f"layer_{i}"), f"bert.encoder.layer.{i}"
    for proj in ("query", "key", "value"):
      dense(f"{hf}.attention.self.{proj}", *ours, "attention", proj,
            kernel_shape=(h, nh, hd), bias_shape=(nh, hd))
    out.append(Tensor(f"{hf}.attention.output.dense.weight", (*ours, "attention", "out_kernel"),
                      (nh, hd, h), (h, nh * hd), linear=True))
    out.append(Tensor(f"{hf}.attention.output.dense.bias", (*ours, "attention", "out_bias"),
                      (h,), (h,)))
    norm(f"{hf}.attention.output.LayerNorm", *ours, "attention_norm")
    dense(f"{hf}.intermediate.dense", *ours, "intermediate",
          kernel_shape=(h, cfg.intermediate_size), bias_shape=(cfg.intermediate_size,))
    dense(f"{hf}.output.dense", *ours, "output",
          kernel_shape=(cfg.intermediate_size, h), bias_shape=(h,))
    norm(f"{hf}.output.LayerNorm", *ours, "output_norm")
  dense("cls.predictions.transform.dense", "mlm", "transform",
        kernel_shape=(h, h), bias_shape=(h,))
  norm("cls.predictions.transform.LayerNorm", "mlm", "transform_norm")
  out.append(Tensor("cls.predictions.bias", ("mlm", "output_bias"), (v,), (v,)))
  return out


def canonical(name: str) -> str:
  """HF's name of a tensor as `BertForMaskedLM` has it: a `BertModel` saves its
  tensors without the `bert.` prefix; old checkpoints name LayerNorm's gamma/beta."""
  if name.endswith("LayerNorm.gamma"):
    name = name[:-len("gamma")] + "weight"
  elif name.endswith("LayerNorm.beta"):
    name = name[:-len("beta")] + "bias"
  return name if name.startswith(("bert.", "cls.")) else "bert." + name


# ---------------------------------------------------------------------------
# Ours -> HF.


def _get(tree: Mapping[str, Any], *path: str, shape: tuple[int, ...]) -> np.ndarray:
  """tree[path[0]][path[1]]... as float32, checked against the config's shape."""
  node = tree
  for i, key in enumerate(path):
    if not isinstance(node, Mapping) or key not in node:
      raise KeyError(f"params has no {'/'.join(path[:i + 1])} (expected a "
                     "BertForPretraining param tree)")
    node = node[key]
  if tuple(np.shape(node)) != tuple(shape):
    raise ValueError(f"params {'/'.join(path)} has shape {tuple(np.shape(node))}, "
                     f"the config says {tuple(shape)}")
  return np.asarray(node, np.float32)


def hf_state_dict(params: Mapping[str, Any], cfg: BertConfig) -> dict[str, np.ndarray]:
  """`BertForMaskedLM` tensors (float32, torch layout) from our param tree (`param_table`)."""
  if cfg.scan_layers:  # stacked blocks -> one entry per layer, as HF numbers them
    from tokendrop_jax.model.encoder import to_unrolled  # pylint: disable=g-import-not-at-top
    params = {**params, "bert": to_unrolled(params["bert"], cfg)}
  n_layers = sum(1 for k in params.get("bert", {}) if k.startswith("layer_"))
  if n_layers != cfg.num_layers:
    raise ValueError(f"params have {n_layers} layers, the config says {cfg.num_layers}")
  return {t.hf: np.ascontiguousarray(t.to_hf(_get(params, *t.path, shape=t.shape)))
          for t in param_table(cfg)}


# ---------------------------------------------------------------------------
# HF -> ours.


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def params_from_hf(tensors: Mapping[str, np.ndarray], cfg: BertConfig,
                   where: str) -> tuple[dict, bool]:
  """(our param tree in the unrolled layout, float32; whether it has the MLM head).

  The inverse of `hf_state_dict`, through the same `param_table`; `tensors` by
  `canonical` name, `where` names them in errors. Without `cls.predictions.*`
  (a `BertModel`) the tree has only 'bert'.
  """
  table = param_table(cfg)
  known = {t.hf for t in table}
  has_head = any(t.hf in tensors for t in table if t.path[0] == "mlm")
  unknown = sorted(set(tensors) - known - set(_UNUSED) - set(_DECODER))
  if unknown:
    raise ValueError(f"{where}: tensors {unknown[:5]} are not in a BERT of {HF_CONFIG}'s "
                     "sizes (another architecture?)")
  for decoder, tied in _DECODER.items():
    if decoder in tensors and tied in tensors and not np.array_equal(tensors[decoder],
                                                                     tensors[tied]):
      raise ValueError(f"{where}: {decoder} differs from {tied}; our MLM decoder is tied to "
                       f"it (tie_word_embeddings), an untied head cannot be imported")
  params: dict = {}
  for t in table:
    if t.hf not in tensors:
      if t.path[0] == "mlm" and not has_head:
        continue
      raise ValueError(f"{where}: no tensor {t.hf}")
    x = tensors[t.hf]
    if tuple(x.shape) != t.hf_shape:
      if t.hf == "bert.embeddings.word_embeddings.weight" and x.shape[1:] == t.hf_shape[1:]:
        raise ValueError(f"{where}: {t.hf} has {x.shape[0]} rows but {HF_CONFIG} has "
                         f"vocab_size={cfg.vocab_size}")
      raise ValueError(f"{where}: {t.hf} has shape {tuple(x.shape)}, but {HF_CONFIG}'s sizes "
                       f"give {t.hf_shape}")
    _set(params, t.path, np.ascontiguousarray(t.from_hf(np.asarray(x, np.float32))))
  return params, has_head
