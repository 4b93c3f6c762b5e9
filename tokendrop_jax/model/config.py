"""The model's sizes and options (`BertConfig`), and the tables its option names index.

Kept apart from the Flax modules: configs, FLOPs counts, checkpoints and the
Hugging Face export read the sizes without building a model.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tokendrop_jax.model import attention as attention_lib

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
    if self.scan_layers and self.num_layers < 2:
      raise ValueError(f"model.scan_layers needs model.num_layers >= 2 (the cross layer and "
                       f"the last one stay single), got {self.num_layers}")
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
