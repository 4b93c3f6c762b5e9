"""Dropout's fused random bits equal `jax.random.bits`, and the step has no hash loop."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokendrop_jax.model import random_bits

SHAPES = [(1,), (7,), (3, 5), (2, 3, 5, 7), (4, 2, 64, 64), (4097,)]


@pytest.mark.parametrize("shape", SHAPES)
def test_bits16_equal_jax_random_bits_for_threefry_keys(shape):
  for seed in (0, 1, 2 ** 31 + 5):
    key = jax.random.fold_in(jax.random.key(seed, impl="threefry2x32"), 7)
    ours = jax.jit(random_bits.bits16, static_argnums=1)(key, shape)
    theirs = jax.random.bits(key, shape, jnp.uint16)
    assert ours.dtype == theirs.dtype == jnp.uint16 and ours.shape == theirs.shape
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))


def test_threefry2x32_matches_the_published_test_vector():
  # Random123's known-answer test for threefry2x32_20: key = counter = (0, 0).
  zero = jnp.zeros((1,), jnp.uint32)
  t0, t1 = random_bits.threefry2x32(jnp.uint32(0), jnp.uint32(0), zero, zero)
  assert (int(t0[0]), int(t1[0])) == (0x6B200159, 0x99BA4EFE)


@pytest.mark.parametrize("impl", ["rbg", "unsafe_rbg"])
def test_other_prngs_draw_through_jax_random_bits(impl):
  key = jax.random.key(3, impl=impl)
  np.testing.assert_array_equal(np.asarray(random_bits.bits16(key, (5, 9))),
                                np.asarray(jax.random.bits(key, (5, 9), jnp.uint16)))


def _loop_array_sizes(hlo: str) -> list[int]:
  """Element counts of the arrays each `while` of the compiled HLO carries."""
  sizes = []
  for line in hlo.splitlines():
    if " while(" in line:
      state = line.split(" while(")[0]
      sizes += [math.prod(int(d) for d in dims.split(",") if d)
                for dims in re.findall(r"\w+\[([\d,]*)\]", state)]
  return sizes


def test_the_train_step_on_cpu_has_no_random_bits_loop():
  """JAX's threefry on CPU is a rolled while loop that writes each mask to memory
  (~17% of the bench_cpu step); only the keys' splits and fold-ins may loop."""
  from tokendrop_jax import benchmark, config_lib
  config = config_lib.load_file("configs/tiny.py")
  bench = benchmark.setup(config)
  step = bench.jit_step(bench.settings.full())
  hlo = step.lower(bench.abstract, bench.batch).compile().as_text()
  assert config.model.dropout_rate > 0 and "xor(" in hlo  # the step does draw dropout bits
  assert max(_loop_array_sizes(hlo), default=0) <= 8
  # The same check sees JAX's own loop (so it can fail): a key-sized loop is not a mask.
  masks = jax.jit(lambda k: jax.random.bits(k, (16, 64), jnp.uint16)).lower(
      jax.random.key(0)).compile().as_text()
  assert max(_loop_array_sizes(masks)) == 16 * 64
