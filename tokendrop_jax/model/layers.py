"""What every part of the encoder is built from: parameter init, dropout, LayerNorm,
multi-head attention and the post-LN transformer layer (attention + FFN).

Every parameter carries logical axis names (`vocab, embed, mlp, heads, kv`) so
that sharding is a table of rules, not code.
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokendrop_jax.model import attention as attention_lib
from tokendrop_jax.model import random_bits
from tokendrop_jax.model.config import ACTIVATIONS, REMAT_POLICIES, BertConfig

Array = jax.Array


def param_init(cfg: BertConfig, axes: tuple[Optional[str], ...]):
  """BERT's truncated-normal init, the param tagged with its logical `axes`."""
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
  """LayerNorm over hidden; its scale and bias on the `embed` axis."""
  return nn.LayerNorm(
      epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
      scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)), name=name)


class HeadProjection(nn.Module):
  """x [batch, seq, hidden] -> [batch, heads, seq, head_dim].

  Head-major output: on CPU the score and context matmuls then run ~2x faster
  than with XLA's transposes of the [batch, seq, heads, head_dim] layout.
  """
  cfg: BertConfig

  @nn.compact
  def __call__(self, x: Array) -> Array:
    cfg = self.cfg
    kernel = self.param("kernel", param_init(cfg, ("embed", "heads", "kv")),
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
    kernel = self.param("out_kernel", param_init(cfg, ("heads", "kv", "embed")),
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
                 kernel_init=param_init(cfg, ("embed", "mlp")),
                 bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",)),
                 name="intermediate")(x)
    h = ACTIVATIONS[cfg.hidden_act](h)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = nn.Dense(cfg.hidden_size, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                 kernel_init=param_init(cfg, ("mlp", "embed")),
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
