"""BERT encoder in Flax (post-LN, tanh-GELU by default), with the token-dropping layer split.

The encoder runs either the plain model (`keep_idx=None`) or the token-dropping
model of Hou et al. (2022): with `L` layers and split `s = L // 2 - 1`,

  layers 0 .. s-1    all tokens
  layer  s           the cross layer: kept queries, all keys/values
  layers s+1 .. L-2  kept tokens only, [batch, keep, hidden]
  layer  L-1         all tokens: kept ones carry layer L-2's output, dropped ones
                     layer s-1's output, re-merged into the original order.

Which tokens are kept is decided outside (`token_drop.select_kept`); the model
only receives the static-shape index array `keep_idx` [batch, keep]. A 3-D
`keep_idx` [L-1-s, batch, keep] selects layer-wise dropping (random-LTD, one
subset per middle layer) instead.

The scanned layout (`scan_layers`) stacks each block of identical layers; the
unrolled one names them `layer_<i>`; `to_scanned` / `to_unrolled` convert params.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokendrop_jax.model import token_drop
from tokendrop_jax.model.config import BertConfig
from tokendrop_jax.model.embeddings import Embeddings
from tokendrop_jax.model.layers import remat_layer

Array = jax.Array


def run_layer(layer, x: Array, key_mask: Array, deterministic: bool,
              keep: Optional[Array] = None) -> Array:
  """One layer on all tokens, or with `keep` [batch, keep] on that subset only: the
  others carry their input past it unchanged (layer-wise dropping)."""
  if keep is None:
    return layer(x, x, key_mask, deterministic)
  kept = token_drop.gather_kept(x, keep)  # [batch, keep, hidden]
  kept = layer(kept, kept, token_drop.gather_kept(key_mask, keep), deterministic)
  return token_drop.scatter_tokens(x, keep, kept)


class ScannedLayers(nn.Module):
  """`count` TransformerLayers run by nn.scan, params stacked [count, ...] on "layers".

  __call__(x [batch, seq, hidden], key_mask [batch, seq], deterministic, keep_idx=None)
  -> (x, h0 [count, batch, hidden]: each layer's output at position 0). With
  `keep_idx` [count, batch, keep] (layer-wise), layer j runs on its own subset.
  """
  cfg: BertConfig
  count: int

  @nn.compact
  def __call__(self, x: Array, key_mask: Array, deterministic: bool,
               keep_idx: Optional[Array] = None):
    def body(layer, x, keep):
      x = run_layer(layer, x, key_mask, deterministic, keep)
      return x, x[:, 0]

    scan = nn.scan(body, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                   length=self.count, metadata_params={nn.PARTITION_NAME: "layers"})
    return scan(remat_layer(self.cfg)(self.cfg, name="layer"), x, keep_idx)


def scanned_names(cfg: BertConfig) -> tuple[str, int, int]:
  """Where the unrolled layers go when scanned: (name, first layer, count) per block;
  single layers (the cross layer s and the last) keep their `layer_<i>` names."""
  s, last = cfg.split_layer, cfg.num_layers - 1
  return tuple(b for b in (("pre_layers", 0, s), ("mid_layers", s + 1, last - s - 1)) if b[2])


def to_scanned(bert: dict, cfg: BertConfig) -> dict:
  """Encoder params of the unrolled layout (`layer_<i>`) -> the scanned one."""
  out = dict(bert)
  for name, first, count in scanned_names(cfg):
    layers = [out.pop(f"layer_{i}") for i in range(first, first + count)]
    out[name] = {"layer": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
  return out


def to_unrolled(bert: dict, cfg: BertConfig) -> dict:
  """Encoder params of the scanned layout -> the unrolled one (`layer_<i>`)."""
  out = dict(bert)
  for name, first, count in scanned_names(cfg):
    stacked = out.pop(name)["layer"]
    for j in range(count):
      out[f"layer_{first + j}"] = jax.tree.map(lambda x, j=j: x[j], stacked)
  return out


class BertEncoder(nn.Module):
  """Embeddings + L layers. `keep_idx` switches on token dropping.

  keep_idx: None (full model), [batch, keep] (the paper: one subset for the
  middle block), or [L - 1 - s, batch, keep] (layer-wise: one subset per middle layer);
  each row distinct positions in increasing order, as `token_drop.select_kept` gives.
  The layers run as four parts, scanned or unrolled alike: the block before the
  cross layer s, layer s, the middle block, the last layer (`_block`, `_layer`).
  """
  cfg: BertConfig

  def setup(self):
    self.embeddings = Embeddings(self.cfg)
    layer = remat_layer(self.cfg)
    if self.cfg.scan_layers:
      s, last = self.cfg.split_layer, self.cfg.num_layers - 1
      self.blocks = {name: ScannedLayers(self.cfg, count, name=name)
                     for name, _, count in scanned_names(self.cfg)}
      self.single = {i: layer(self.cfg, name=f"layer_{i}") for i in (s, last)}
      return
    self.layers = [layer(self.cfg, name=f"layer_{i}") for i in range(self.cfg.num_layers)]

  def _layer(self, i: int):
    """Layer i: the cross layer s or the last one (the layers scanning leaves single)."""
    return self.single[i] if self.cfg.scan_layers else self.layers[i]

  def _block(self, name: str, x: Array, mask: Array, deterministic: bool,
             keep: Optional[Array] = None) -> tuple[Array, Optional[Array]]:
    """The layers of block `name` (`scanned_names`) -> (x, h0 [count, batch, hidden]: each
    layer's output at position 0; None for an empty block). `keep` [count, batch, keep]:
    layer j on its own subset (layer-wise)."""
    found = [(first, count) for n, first, count in scanned_names(self.cfg) if n == name]
    if not found:
      return x, None
    if self.cfg.scan_layers:
      return self.blocks[name](x, mask, deterministic, keep)
    first, count = found[0]
    h0 = []
    for j in range(count):
      x = run_layer(self.layers[first + j], x, mask, deterministic,
                    None if keep is None else keep[j])
      h0.append(x[:, 0])
    return x, jnp.stack(h0)

  def __call__(self, input_ids: Array, input_mask: Array, token_type_ids: Array,
               keep_idx: Optional[Array] = None, deterministic: bool = True,
               cls_layers: int = 0):
    """-> x [batch, seq, hidden]; with `cls_layers` = n > 0, (x, cls [n, batch, hidden]):
    the [CLS] (position 0) output of each of the last n layers (ScTD as its authors define
    it compares them between the full and the token-dropping pass)."""
    s, last = self.cfg.split_layer, self.cfg.num_layers - 1
    cls: list[Array] = []

    def record(i: int, h0: Array) -> None:  # h0 [batch, hidden]: layer i's output at position 0
      if i > last - cls_layers:
        cls.append(h0)

    def record_block(first: int, h0: Optional[Array], first_kept=None, carried=None) -> None:
      for j in range(0 if h0 is None else h0.shape[0]):
        record(first + j, h0[j] if first_kept is None else jnp.where(first_kept, h0[j], carried))

    def out(x):
      return (x, jnp.stack(cls)) if cls_layers else x

    x = self.embeddings(input_ids, token_type_ids, deterministic)  # [batch, seq, hidden]
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    if keep_idx is None and not self.cfg.scan_layers:  # every layer in order (L = 1 too)
      for i, layer in enumerate(self.layers):
        x = layer(x, x, input_mask, deterministic)
        record(i, x[:, 0])
      return out(x)
    x, h0 = self._block("pre_layers", x, input_mask, deterministic)
    record_block(0, h0)
    if keep_idx is None:
      x = self._layer(s)(x, x, input_mask, deterministic)
      record(s, x[:, 0])
      x, h0 = self._block("mid_layers", x, input_mask, deterministic)
      record_block(s + 1, h0)
    elif keep_idx.ndim == 3:
      # Random-LTD: layer s and each middle layer s+j on its own subset keep_idx[j]; unlike
      # the paper's split there is no cross layer (a kept token attends to kept tokens).
      if keep_idx.shape[0] != last - s:
        raise ValueError(f"layer-wise keep_idx needs one row per middle layer ({last - s}), "
                         f"got shape {keep_idx.shape}")
      x = run_layer(self._layer(s), x, input_mask, deterministic, keep_idx[0])
      record(s, x[:, 0])
      x, h0 = self._block("mid_layers", x, input_mask, deterministic, keep_idx[1:])
      record_block(s + 1, h0)
    else:
      # x: layer s-1's output for all tokens; dropped tokens carry it to the last layer.
      kept_mask = token_drop.gather_kept(input_mask, keep_idx)  # [batch, keep]
      # Position 0, if kept, is the first kept token (kept positions ascend).
      first_kept = (keep_idx[:, :1] == 0)  # [batch, 1]
      kept = self._layer(s)(token_drop.gather_kept(x, keep_idx), x, input_mask, deterministic)
      record(s, jnp.where(first_kept, kept[:, 0], x[:, 0]))
      kept, h0 = self._block("mid_layers", kept, kept_mask, deterministic)  # [batch, keep, hidden]
      record_block(s + 1, h0, first_kept, x[:, 0])
      x = token_drop.scatter_tokens(x, keep_idx, kept)
    x = self._layer(last)(x, x, input_mask, deterministic)
    record(last, x[:, 0])
    return out(x)
