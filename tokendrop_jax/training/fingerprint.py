"""A content fingerprint of a train state: one uint32 per leaf, computed on device.

Saved with each checkpoint and checked on restore, because bit flips in the
array files are otherwise restored silently. Leaves are named by their pytree
path ('params/layer_0/kernel'), which is the same for a live tree and for
orbax's metadata of it.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np


def _key_str(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _path_str(path) -> str:
  return "/".join(_key_str(k) for k in path) or "<root>"


def flat(tree) -> dict[str, Any]:
  """{'params/layer_0/kernel': leaf} in tree order; empty nodes vanish."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_str(p): leaf for p, leaf in leaves}


def _as_uint32(x: jax.Array) -> jax.Array:
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = x.dtype.itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size in (1, 2):
    u = {1: jnp.uint8, 2: jnp.uint16}[size]
    return jax.lax.bitcast_convert_type(x, u).astype(jnp.uint32)
  if size == 8:  # -> shape + (2,)
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  raise TypeError(f"Cannot fingerprint dtype {x.dtype}.")


def _leaf_hash(x: jax.Array) -> jax.Array:
  u = _as_uint32(jnp.asarray(x))
  # Position weights from iotas (no reshape, so sharded arrays stay sharded).
  idx = jnp.zeros(u.shape, jnp.uint32)
  stride = 1
  for d in reversed(range(u.ndim)):
    idx = idx + jax.lax.broadcasted_iota(jnp.uint32, u.shape, d) * jnp.uint32(
        stride % 2**32)
    stride *= u.shape[d]
  w = (idx * jnp.uint32(0x9E3779B1)) | jnp.uint32(1)  # odd: no bit is lost
  mixed = u ^ (u >> 15)  # bijective
  return jnp.sum(mixed * w, dtype=jnp.uint32)


@jax.jit
def _tree_hashes(leaves):
  if not leaves:
    return jnp.zeros((0,), jnp.uint32)
  return jnp.stack([_leaf_hash(x) for x in leaves])


def fingerprint(state) -> dict[str, list]:
  """{path: [uint32 hash, dtype]} of every array leaf, computed on device."""
  leaves = flat(state)
  paths = list(leaves)
  hashes = _tree_hashes([leaves[p] for p in paths])
  if not hashes.is_fully_addressable:  # Multi-host: every process has a copy.
    hashes = hashes.addressable_data(0)
  hashes = np.asarray(jax.device_get(hashes))
  return {p: [int(h), str(leaves[p].dtype)] for p, h in zip(paths, hashes)}


def verify(state, expected: Mapping[str, list], where: str) -> None:
  """IOError naming the first leaf whose hash differs from `expected`.

  Leaves of `expected` that `state` lacks (a partial restore: the params alone) are
  not checked. A leaf restored in another dtype than it was saved in is checked in
  the saved one when the restored dtype holds every value of it (bf16 saved, f32
  restored: cast back exactly); when it does not, the leaf cannot be checked, and a
  warning names it.
  """
  leaves = flat(state)
  got = fingerprint(state)
  for path, (h, dtype) in expected.items():
    if path not in got:
      continue
    found = got[path][0]
    if got[path][1] != dtype:
      restored = jnp.asarray(leaves[path]).dtype
      if jnp.promote_types(dtype, restored) != restored:  # narrowed on restore: lossy
        logging.warning("%s: %s was saved as %s and restored as %s, which cannot hold all "
                        "its values; its fingerprint is not checked.", where, path, dtype,
                        restored)
        continue
      found = int(jax.device_get(_tree_hashes([jnp.asarray(leaves[path]).astype(dtype)]))[0])
    if found != h:
      raise IOError(f"{where}: {path} does not match the fingerprint recorded "
                    "at save time (corrupt file).")
