"""The train state: everything a run needs to continue exactly where it stopped,
and its `Layout` on a device mesh (shared by pretraining, fine-tuning and the
benchmarks)."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from tokendrop_jax import config_lib
from tokendrop_jax.training import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar: optimizer steps taken
  params: Any            # model parameters (f32)
  opt_state: Any         # optax state
  rng: jax.Array         # uint32 key data of the base key (`step_key`), so resume is exact
  importance: jax.Array  # float32 [vocab]: token importance (loss EMA / frequency)


def base_key(seed: int, prng_impl: str = "threefry") -> jax.Array:
  """The run's typed key under `train.prng_impl`. Its threefry bits are
  `jax.random.PRNGKey(seed)`'s, so runs from before the option are unchanged."""
  return jax.random.key(seed, impl=config_lib.PRNG_IMPLS[prng_impl])


def key_bits(key: jax.Array) -> jax.Array:
  """uint32 key data (a raw key passes through): what a state stores, as orbax saves
  plain arrays and checkpoints from before `train.prng_impl` hold threefry's uint32[2]."""
  return jax.random.key_data(key)


def step_key(rng: jax.Array, step: jax.Array, prng_impl: str = "threefry") -> jax.Array:
  """The typed key of `step` from a state's `rng` bits: fold_in(rng, step)."""
  key = jax.random.wrap_key_data(rng, impl=config_lib.PRNG_IMPLS[prng_impl])
  return jax.random.fold_in(key, step)


def make_state_init(model, optimizer, seq_len: int, num_predictions: int):
  """`init(rng, importance) -> TrainState` with *boxed* params (logical axes kept).

  Use `jax.eval_shape` on it for the abstract state and its partition specs, and
  `nn.unbox` of its output inside `jax.jit(..., out_shardings=...)` to create it.
  """

  def init(rng, importance):
    params_rng, state_rng = jax.random.split(rng)
    ids = jnp.zeros((1, seq_len), jnp.int32)
    positions = jnp.zeros((1, num_predictions), jnp.int32)
    params = model.init({"params": params_rng}, ids, ids, ids, positions)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=optimizer.init(params), rng=key_bits(state_rng),
                      importance=jnp.asarray(importance, jnp.float32))

  return init


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a train state lives on a mesh: shardings, abstract state, sharded init."""
  mesh: jax.sharding.Mesh
  rules: Any
  sharding: Any   # NamedSharding per leaf (the structure of the unboxed state)
  abstract: Any   # ShapeDtypeStruct per leaf, with its sharding: restore targets

  def jit_init(self, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn(*args) -> unboxed state`, jitted to create each leaf already sharded."""
    jitted = jax.jit(fn, out_shardings=self.sharding)

    def init(*args):
      with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
        return jitted(*args)

    return init


def layout(boxed_init: Callable[..., Any], *args, mesh, rules) -> Layout:
  """The Layout of `boxed_init(*args)` (a state with logical boxes), without running it."""
  boxed = jax.eval_shape(boxed_init, *args)
  shardings = sharding_lib.param_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nn.unbox(boxed), shardings)
  return Layout(mesh, rules, shardings, abstract)
