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

Every parameter carries logical axis names (`vocab, embed, mlp, heads, kv`) so
that sharding is a table of rules, not code.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokendrop_jax.model import attention as attention_lib
from tokendrop_jax.model import random_bits
from tokendrop_jax.model import token_drop

Array = jax.Array


def remat_name(remat):
  """`model.remat` as a policy name: configs and saved runs from before the
  policies have a bool (True = "full", False = "none"); anything else unchanged."""
  return ("full" if remat else "none") if isinstance(remat, bool) else remat


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """Model sizes; `from_dict` accepts an `ml_collections` model section."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  intermediate_size: int = 3072
  max_position: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  dtype: str = "float32"  # compute dtype, e.g. "bfloat16" on accelerators
  param_dtype: str = "float32"
  # What each layer keeps for the backward pass (REMAT_POLICIES); the rest is recomputed.
  # True/False (older configs) mean "full"/"none".
  remat: str = "none"
  hidden_act: str = "gelu_tanh"  # FFN and MLM-head activation (ACTIVATIONS)
  attention: str = "auto"  # the kernel (model/attention.py): auto, einsum, xla, cudnn, splash
  # Run each block of identical layers (before the cross layer; the middle) under nn.scan:
  # one layer compiled per block instead of one per layer. Params stack on a "layers" axis.
  scan_layers: bool = False

  def __post_init__(self):
    object.__setattr__(self, "remat", remat_name(self.remat))

  @classmethod
  def from_dict(cls, d) -> "BertConfig":
    d = dict(d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"unknown model config field(s): {', '.join('model.' + u for u in unknown)}")
    return cls(**d)

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def split_layer(self) -> int:
    """The cross layer `s`: the last layer whose queries are a subset."""
    return self.num_layers // 2 - 1

  def validate(self) -> None:
    """Raises ValueError naming the bad field (before anything compiles)."""
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads",
                 "intermediate_size", "max_position", "type_vocab_size"):
      if int(getattr(self, name)) <= 0:
        raise ValueError(f"model.{name} must be positive, got {getattr(self, name)}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"model.num_heads ({self.num_heads}) must divide "
                       f"model.hidden_size ({self.hidden_size})")
    for name in ("dropout_rate", "attention_dropout_rate"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
    for name in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError as e:
        raise ValueError(f"model.{name}: unknown dtype {getattr(self, name)!r}") from e
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat must be one of {tuple(REMAT_POLICIES)} (or a bool: "
                       f"True = 'full'), got {self.remat!r}")
    if self.attention not in attention_lib.IMPLEMENTATIONS:
      raise ValueError(f"model.attention must be one of {attention_lib.IMPLEMENTATIONS}, got "
                       f"{self.attention!r}")
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"model.hidden_act must be one of {tuple(ACTIVATIONS)}, got "
                       f"{self.hidden_act!r}")


# model.remat -> what a layer saves for the backward pass (None: no remat, all saved).
# "full" recomputes the whole layer; "dots" keeps every matmul output and recomputes the
# elementwise work (softmax, GELU, LayerNorm, dropout); "dots_no_batch" keeps only the
# matmuls without batch dimensions (the weight projections, not q·k or probs·v).
REMAT_POLICIES: dict[str, Optional[Callable[..., bool]]] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}

# model.hidden_act -> the function. BERT's original is the tanh approximation
# (Hugging Face's "gelu_new"); "gelu" is the exact erf form (HF's "gelu").
ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "gelu_tanh": functools.partial(nn.gelu, approximate=True),
    "gelu": functools.partial(nn.gelu, approximate=False),
}


def _init(cfg: BertConfig, axes: tuple[Optional[str], ...]):
  return nn.with_logical_partitioning(
      nn.initializers.truncated_normal(cfg.initializer_range), axes)


def dropout(module: nn.Module, x: Array, rate: float, deterministic: bool) -> Array:
  """Dropout from 16-bit random bits: same semantics as `nn.Dropout`. The bits are
  `jax.random.bits(rng, x.shape, uint16)`'s, computed as one fusion with their use
  (`random_bits.bits16`): on CPU, JAX's own threefry loop writes every mask to memory."""
  if deterministic or rate == 0.0:
    return x
  bits = random_bits.bits16(module.make_rng("dropout"), x.shape)
  keep = bits >= jnp.uint16(min(round(rate * 65536), 65535))
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def layer_norm(cfg: BertConfig, name: Optional[str] = None) -> nn.LayerNorm:
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), name=name)


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
  cfg: BertConfig

  def setup(self):
    cfg = self.cfg
    self.word = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                         embedding_init=_init(cfg, ("vocab", "embed")))
    self.position = nn.Embed(cfg.max_position, cfg.hidden_size, param_dtype=cfg.param_dtype,
                             embedding_init=_init(cfg, (None, "embed")))
    self.token_type = nn.Embed(cfg.type_vocab_size, cfg.hidden_size, param_dtype=cfg.param_dtype,
                               embedding_init=_init(cfg, (None, "embed")))
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


class HeadProjection(nn.Module):
  """x [batch, seq, hidden] -> [batch, heads, seq, head_dim].

  Head-major output: on CPU the score and context matmuls then run ~2x faster
  than with XLA's transposes of the [batch, seq, heads, head_dim] layout.
  """
  cfg: BertConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    kernel = self.param("kernel", _init(cfg, ("embed", "heads", "kv")),
                        (cfg.hidden_size, cfg.num_heads, cfg.head_dim), cfg.param_dtype)
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("heads", "kv")),
                      (cfg.num_heads, cfg.head_dim), cfg.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=cfg.dtype)
    return jnp.einsum("bse,ehd->bhsd", x, kernel) + bias[None, :, None, :]


class Attention(nn.Module):
  """Multi-head attention where queries may be a subset of the keys/values."""
  cfg: BertConfig

  @nn.compact
  def __call__(self, x_q: Array, x_kv: Array, key_mask: Array, deterministic: bool) -> Array:
    cfg = self.cfg
    q = HeadProjection(cfg, name="query")(x_q)   # [batch, heads, q_len, head_dim]
    k = HeadProjection(cfg, name="key")(x_kv)    # [batch, heads, kv_len, head_dim]
    v = HeadProjection(cfg, name="value")(x_kv)  # [batch, heads, kv_len, head_dim]
    impl = attention_lib.resolve(cfg.attention, jax.default_backend(), cfg.dtype,
                                 cfg.attention_dropout_rate)
    if impl == "einsum":
      logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) / math.sqrt(cfg.head_dim)
      logits = jnp.where(key_mask[:, None, None, :] > 0, logits, -1e9)
      probs = jax.nn.softmax(logits, axis=-1).astype(cfg.dtype)  # [batch, heads, q_len, kv_len]
      probs = dropout(self, probs, cfg.attention_dropout_rate, deterministic)
      ctx = jnp.einsum("bhqk,bhkd->bhqd", probs, v)
    else:  # no [q_len, kv_len] array in memory; no attention dropout (attention.check)
      ctx = attention_lib.fused(impl, q, k, v, key_mask).astype(cfg.dtype)
    kernel = self.param("out_kernel", _init(cfg, ("heads", "kv", "embed")),
                        (cfg.num_heads, cfg.head_dim, cfg.hidden_size), cfg.param_dtype)
    bias = self.param("out_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                      (cfg.hidden_size,), cfg.param_dtype)
    ctx, kernel, bias = nn.dtypes.promote_dtype(ctx, kernel, bias, dtype=cfg.dtype)
    return jnp.einsum("bhqd,hde->bqe", ctx, kernel) + bias  # [batch, q_len, hidden]


class TransformerLayer(nn.Module):
  """Post-LN block. `x_q` are the rows updated; `x_kv` the rows attended to."""
  cfg: BertConfig

  @nn.compact
  def __call__(self, x_q: Array, x_kv: Array, key_mask: Array, deterministic: bool) -> Array:
    cfg = self.cfg
    h = Attention(cfg, name="attention")(x_q, x_kv, key_mask, deterministic)
    x = layer_norm(cfg, "attention_norm")(x_q + dropout(self, h, cfg.dropout_rate, deterministic))
    h = nn.Dense(cfg.intermediate_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                 kernel_init=_init(cfg, ("embed", "mlp")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
                 name="intermediate")(x)
    h = ACTIVATIONS[cfg.hidden_act](h)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = nn.Dense(cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                 kernel_init=_init(cfg, ("mlp", "embed")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                 name="output")(h)
    x = layer_norm(cfg, "output_norm")(x + dropout(self, h, cfg.dropout_rate, deterministic))
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


def remat_layer(cfg: BertConfig) -> type[nn.Module]:
  """TransformerLayer, wrapped by `nn.remat` with `cfg.remat`'s policy unless "none"."""
  if cfg.remat == "none":
    return TransformerLayer
  # deterministic (arg 4, counting self) is a Python bool: static under remat.
  return nn.remat(TransformerLayer, policy=REMAT_POLICIES[cfg.remat], static_argnums=(4,))


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
      if keep is None:
        x = layer(x, x, key_mask, deterministic)
      else:
        kept = token_drop.gather_tokens(x, keep)  # [batch, keep, hidden]
        kept = layer(kept, kept, token_drop.gather_tokens(key_mask, keep), deterministic)
        x = token_drop.scatter_tokens(x, keep, kept)
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
  middle block), or [L - 1 - s, batch, keep] (layer-wise: one subset per middle layer).
  """
  cfg: BertConfig

  def setup(self):
    self.embeddings = Embeddings(self.cfg)
    if self.cfg.scan_layers:
      s, last = self.cfg.split_layer, self.cfg.num_layers - 1
      self.blocks = {name: ScannedLayers(self.cfg, count, name=name)
                     for name, _, count in scanned_names(self.cfg)}
      self.cross = remat_layer(self.cfg)(self.cfg, name=f"layer_{s}")
      self.last_layer = remat_layer(self.cfg)(self.cfg, name=f"layer_{last}")
      return
    self.layers = [remat_layer(self.cfg)(self.cfg, name=f"layer_{i}")
                   for i in range(self.cfg.num_layers)]

  def __call__(self, input_ids: Array, input_mask: Array, token_type_ids: Array,
               keep_idx: Optional[Array] = None, deterministic: bool = True,
               cls_layers: int = 0):
    """-> x [batch, seq, hidden]; with `cls_layers` = n > 0, (x, cls [n, batch, hidden]):
    the [CLS] (position 0) output of each of the last n layers (ScTD as its authors define
    it compares them between the full and the token-dropping pass)."""
    last = self.cfg.num_layers - 1
    cls: list[Array] = []

    def record(i: int, h0: Array) -> None:  # h0 [batch, hidden]: layer i's output at position 0
      if i > last - cls_layers:
        cls.append(h0)

    def out(x):
      return (x, jnp.stack(cls)) if cls_layers else x

    x = self.embeddings(input_ids, token_type_ids, deterministic)  # [batch, seq, hidden]
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    if self.cfg.scan_layers:
      return out(self._scanned(x, input_mask, keep_idx, deterministic, record))
    if keep_idx is None:
      for i, layer in enumerate(self.layers):
        x = layer(x, x, input_mask, deterministic)
        record(i, x[:, 0])
      return out(x)
    s = self.cfg.split_layer
    for i, layer in enumerate(self.layers[:s]):
      x = layer(x, x, input_mask, deterministic)
      record(i, x[:, 0])
    if keep_idx.ndim == 3:
      x = self._layerwise(x, input_mask, keep_idx, deterministic, record)
    else:
      # x: layer s-1's output for all tokens; dropped tokens carry it to the last layer.
      kept_mask = token_drop.gather_tokens(input_mask, keep_idx)  # [batch, keep]
      # Position 0, if kept, is the first kept token (kept positions ascend).
      first_kept = (keep_idx[:, :1] == 0)  # [batch, 1]
      kept = self.layers[s](token_drop.gather_tokens(x, keep_idx), x, input_mask, deterministic)
      record(s, jnp.where(first_kept, kept[:, 0], x[:, 0]))
      for i, layer in enumerate(self.layers[s + 1:last], s + 1):
        kept = layer(kept, kept, kept_mask, deterministic)  # [batch, keep, hidden]
        record(i, jnp.where(first_kept, kept[:, 0], x[:, 0]))
      x = token_drop.scatter_tokens(x, keep_idx, kept)
    x = self.layers[last](x, x, input_mask, deterministic)
    record(last, x[:, 0])
    return out(x)

  def _scanned(self, x: Array, input_mask: Array, keep_idx: Optional[Array], deterministic: bool,
               record: Callable[[int, Array], None]) -> Array:
    """The same layers as the unrolled path, the blocks of identical layers scanned."""
    s, last = self.cfg.split_layer, self.cfg.num_layers - 1

    def block(name, x, mask, keep=None, first_kept=None, carried=None):
      if name not in self.blocks:
        return x
      x, h0 = self.blocks[name](x, mask, deterministic, keep)  # h0 [count, batch, hidden]
      first = 0 if name == "pre_layers" else s + 1
      for j in range(h0.shape[0]):
        record(first + j, h0[j] if first_kept is None else jnp.where(first_kept, h0[j], carried))
      return x

    x = block("pre_layers", x, input_mask)
    if keep_idx is None:
      x = self.cross(x, x, input_mask, deterministic)
      record(s, x[:, 0])
      x = block("mid_layers", x, input_mask)
    elif keep_idx.ndim == 3:  # layer-wise: layer s and each middle layer on its own subset
      if keep_idx.shape[0] != last - s:
        raise ValueError(f"layer-wise keep_idx needs one row per middle layer ({last - s}), "
                         f"got shape {keep_idx.shape}")
      kept = token_drop.gather_tokens(x, keep_idx[0])
      kept = self.cross(kept, kept, token_drop.gather_tokens(input_mask, keep_idx[0]),
                        deterministic)
      x = token_drop.scatter_tokens(x, keep_idx[0], kept)
      record(s, x[:, 0])
      x = block("mid_layers", x, input_mask, keep_idx[1:])
    else:
      kept_mask = token_drop.gather_tokens(input_mask, keep_idx)  # [batch, keep]
      first_kept = (keep_idx[:, :1] == 0)  # [batch, 1]
      kept = self.cross(token_drop.gather_tokens(x, keep_idx), x, input_mask, deterministic)
      record(s, jnp.where(first_kept, kept[:, 0], x[:, 0]))
      kept = block("mid_layers", kept, kept_mask, first_kept=first_kept, carried=x[:, 0])
      x = token_drop.scatter_tokens(x, keep_idx, kept)
    x = self.last_layer(x, x, input_mask, deterministic)
    record(last, x[:, 0])
    return x

  def _layerwise(self, x: Array, input_mask: Array, keep_idx: Array, deterministic: bool,
                 record: Callable[[int, Array], None]) -> Array:
    """Random-LTD: middle layer s+j runs on its own subset keep_idx[j] [batch, keep].

    The tokens a layer skips carry their input past it unchanged; unlike the
    paper's split there is no cross layer (a kept token attends to kept tokens).
    Returns the input of the last layer.
    """
    s, last = self.cfg.split_layer, self.cfg.num_layers - 1
    if keep_idx.shape[0] != last - s:
      raise ValueError(f"layer-wise keep_idx needs one row per middle layer ({last - s}), "
                       f"got shape {keep_idx.shape}")
    for j, layer in enumerate(self.layers[s:last]):
      kept = token_drop.gather_tokens(x, keep_idx[j])  # [batch, keep, hidden]
      kept = layer(kept, kept, token_drop.gather_tokens(input_mask, keep_idx[j]), deterministic)
      x = token_drop.scatter_tokens(x, keep_idx[j], kept)
      record(s + j, x[:, 0])
    return x


class MlmHead(nn.Module):
  """Transform + LayerNorm + decoder tied to the word embeddings (+ output bias)."""
  cfg: BertConfig

  @nn.compact
  def __call__(self, x: Array, embeddings: Embeddings) -> Array:
    cfg = self.cfg
    x = nn.Dense(cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                 kernel_init=_init(cfg, ("embed", "mlp")),
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
                              kernel_init=_init(cfg, ("embed", "mlp")),
                              bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
                              name="pooler")(cls))
    pooled = nn.with_logical_constraint(pooled, ("batch", "mlp"))
    pooled = dropout(self, pooled, cfg.dropout_rate, deterministic)
    logits = nn.Dense(self.num_labels, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                      kernel_init=_init(cfg, ("mlp", None)),
                      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
                      name="classifier")(pooled)
    return logits.astype(jnp.float32)  # [batch, num_labels]
