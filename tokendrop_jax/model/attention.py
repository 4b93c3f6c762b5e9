"""The attention kernel, chosen by `model.attention`.

Every kernel takes the head-major projections HeadProjection makes and a key
padding mask, and returns the context:

  q [batch, heads, q_len, head_dim], k/v [batch, heads, kv_len, head_dim],
  key_mask [batch, kv_len] (1 = a real token)  ->  ctx [batch, heads, q_len, head_dim]

q_len may be smaller than kv_len (the cross layer: kept queries, all keys).

  einsum   scores and probabilities materialised in f32 (layers.Attention); the
           only one with attention dropout. Runs everywhere.
  xla      jax.nn.dot_product_attention, XLA's implementation. Runs everywhere.
  cudnn    jax.nn.dot_product_attention on cuDNN's fused (flash) kernel; GPUs,
           bfloat16/float16 only.
  splash   Pallas splash attention; TPUs. Padding is a segment mask (queries in
           segment 1, padding keys in segment 0), so every query sees exactly the
           real keys, as with einsum. On a mesh it runs per device under
           shard_map (rows on the batch axes, heads on the tensor axis).
  auto     splash on a TPU, cudnn on a GPU (bfloat16/float16), else einsum; einsum
           whenever model.attention_dropout_rate > 0 (no fused kernel drops
           attention probabilities).

The fused kernels do not drop attention probabilities, so choosing one
explicitly with model.attention_dropout_rate > 0 is refused (`check`): BERT's
recipe has 0.1, and silently training without it would be another model.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array
IMPLEMENTATIONS = ("auto", "einsum", "xla", "cudnn", "splash")
_PLATFORM_OF = {"cudnn": "gpu", "splash": "tpu"}
_FUSED_DTYPES = ("bfloat16", "float16")
# Tests set this to run the Pallas kernel in interpret mode on the CPU.
SPLASH_INTERPRET = False


def resolve(name: str, platform: str, dtype: str, attention_dropout_rate: float) -> str:
  """`model.attention` -> the kernel to run on `platform` ('cpu', 'gpu', 'tpu')."""
  if name != "auto":
    return name
  if attention_dropout_rate > 0:
    return "einsum"
  if platform == "tpu":
    return "splash"
  if platform == "gpu" and dtype in _FUSED_DTYPES:
    return "cudnn"
  return "einsum"


def check(name: str, platform: str, dtype: str, attention_dropout_rate: float) -> None:
  """Raises ValueError naming the field when `name` cannot run here (before compiling)."""
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"model.attention must be one of {IMPLEMENTATIONS}, got {name!r}")
  impl = resolve(name, platform, dtype, attention_dropout_rate)
  needs = _PLATFORM_OF.get(impl)
  if needs and platform != needs and not (impl == "splash" and SPLASH_INTERPRET):
    raise ValueError(f"model.attention={name!r} needs a {needs.upper()} (this is a "
                     f"{platform.upper()}); use 'auto', 'xla' or 'einsum'")
  if impl == "cudnn" and dtype not in _FUSED_DTYPES:
    raise ValueError(f"model.attention='cudnn' runs in bfloat16 or float16, but model.dtype="
                     f"{dtype!r}; set --config.model.dtype=bfloat16 or use 'xla'")
  if impl != "einsum" and attention_dropout_rate > 0:
    raise ValueError(f"model.attention={name!r} has no attention dropout, but "
                     f"model.attention_dropout_rate={attention_dropout_rate}; set it to 0.0 "
                     "(the model then differs from BERT's recipe) or use 'einsum'")


def fused(impl: str, q: Array, k: Array, v: Array, key_mask: Array) -> Array:
  """ctx [batch, heads, q_len, head_dim] from a fused kernel ('xla', 'cudnn', 'splash')."""
  if impl == "splash":
    return _splash(q, k, v, key_mask)
  seq_major = lambda x: jnp.swapaxes(x, 1, 2)  # noqa: E731  [b, h, s, d] <-> [b, s, h, d]
  mask = (key_mask > 0)[:, None, None, :]  # [batch, 1, 1, kv_len]
  if impl == "cudnn":  # cuDNN takes the mask as a bias of the full [q_len, kv_len] shape
    mask = jnp.broadcast_to(mask, (q.shape[0], 1, q.shape[2], k.shape[2]))
  ctx = jax.nn.dot_product_attention(seq_major(q), seq_major(k), seq_major(v), mask=mask,
                                     implementation=impl)
  return seq_major(ctx)


def _block(n: int) -> int:
  """The splash block along a length: 128 (its kernel computes in 128-lane blocks)."""
  if n % 128:
    raise ValueError(f"model.attention='splash' needs lengths that are multiples of 128; got "
                     f"{n}: choose data.seq_len and token_drop.keep_tokens (kept tokens) "
                     "accordingly, or use 'xla'")
  return 128


def _splash(q: Array, k: Array, v: Array, key_mask: Array) -> Array:
  from jax.experimental.pallas.ops.tpu.splash_attention import (  # pylint: disable=g-import-not-at-top
      splash_attention_kernel as kernel_lib, splash_attention_mask as mask_lib)
  q_len, kv_len = q.shape[2], k.shape[2]
  bq, bkv = _block(q_len), _block(kv_len)
  sizes = kernel_lib.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                                block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq,
                                block_kv_dq=bkv)

  def per_device(q, k, v, key_mask):  # the shapes of one device's rows and heads
    heads = q.shape[1]
    mask = mask_lib.MultiHeadMask([mask_lib.FullMask((q_len, kv_len))] * heads)
    kernel = kernel_lib.make_splash_mha(mask, head_shards=1, q_seq_shards=1, block_sizes=sizes,
                                        interpret=SPLASH_INTERPRET)
    q_segments = jnp.ones((q_len,), jnp.int32)

    def one(q, k, v, m):  # [heads, len, head_dim]; the kernel takes one example
      return kernel(q, k, v, segment_ids=kernel_lib.SegmentIds(q_segments, m))

    q = (q / math.sqrt(q.shape[-1])).astype(k.dtype)  # the kernel does not scale
    return jax.vmap(one)(q, k, v, (key_mask > 0).astype(jnp.int32))

  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return per_device(q, k, v, key_mask)
  rows = nn.logical_to_mesh_axes(("batch", "heads", "length", "kv"))
  mask_spec = nn.logical_to_mesh_axes(("batch", "length"))
  return jax.shard_map(per_device, mesh=mesh, in_specs=(rows, rows, rows, mask_spec),
                       out_specs=rows, check_vma=False)(q, k, v, key_mask)
