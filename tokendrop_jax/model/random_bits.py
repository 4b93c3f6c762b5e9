"""Dropout's random bits: `jax.random.bits(key, shape, uint16)`, bit for bit, as one fusion.

On CPU, JAX lowers the threefry hash as a rolled 5-iteration loop (to keep compiles
short), so each of the step's ~25 dropout masks is written to memory as two uint32
arrays, kept for the backward pass and read back: about 17% of the `bench_cpu` step.
Written out as plain elementwise ops, the same hash fuses into the ops that use the
mask (forward and backward), and nothing mask-sized is stored.

`bits16` returns exactly what `jax.random.bits` does for a threefry key under
`jax_threefry_partitionable` (the default): uint16(t0 ^ t1), where (t0, t1) is
Threefry-2x32 (20 rounds; Salmon et al., 2011) of the 64-bit row-major index of each
element (high word, low word). tests/test_random_bits.py checks the equality; any other
key (rbg, unsafe_rbg) or setting goes to `jax.random.bits` itself.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))  # alternate every 4 rounds
_PARITY = np.uint32(0x1BD11BDA)  # the third key word is k0 ^ k1 ^ this


def _rotl(x: jax.Array, r: int) -> jax.Array:
  return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k0: jax.Array, k1: jax.Array, x0: jax.Array,
                 x1: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Threefry-2x32 with 20 rounds; key words are uint32 scalars, x0/x1 uint32 arrays."""
  ks = (k0, k1, k0 ^ k1 ^ _PARITY)
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for group in range(5):  # 4 rounds, then inject the key, rotated by one word, and a counter
    for r in _ROTATIONS[group % 2]:
      x0 = x0 + x1
      x1 = _rotl(x1, r) ^ x0
    x0 = x0 + ks[(group + 1) % 3]
    x1 = x1 + ks[(group + 2) % 3] + np.uint32(group + 1)
  return x0, x1


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
  """uint32 row-major index of each element, from per-axis iotas (so that a sharded
  array computes only its own block, as JAX's own iota for random bits does)."""
  strides = np.cumprod((1,) + shape[:0:-1])[::-1]  # row-major, in elements
  return sum(jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * np.uint32(stride)
             for axis, stride in enumerate(strides))


def _is_threefry(key: jax.Array) -> bool:
  return (jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
          and str(jax.random.key_impl(key)) == "threefry2x32")


def bits16(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """uint16 random bits of `shape`, equal to `jax.random.bits(key, shape, jnp.uint16)`."""
  shape = tuple(int(d) for d in shape)
  if (not _is_threefry(key) or not jax.config.jax_threefry_partitionable
      or math.prod(shape) >= 2 ** 32 or not shape):
    return jax.random.bits(key, shape, jnp.uint16)
  k0, k1 = jax.random.key_data(key)  # [2] uint32
  hi = jnp.zeros(shape, jnp.uint32)  # the index's high word: below 2**32 elements, 0
  t0, t1 = threefry2x32(k0, k1, hi, _flat_index(shape))
  return (t0 ^ t1).astype(jnp.uint16)
