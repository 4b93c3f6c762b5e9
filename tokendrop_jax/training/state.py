"""The train state: everything a run needs to continue exactly where it stopped."""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar: optimizer steps taken
  params: Any            # model parameters (f32)
  opt_state: Any         # optax state
  rng: jax.Array         # base key; step keys are fold_in(rng, step), so resume is exact
  importance: jax.Array  # float32 [vocab]: token importance (loss EMA / frequency)


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
                      opt_state=optimizer.init(params), rng=state_rng,
                      importance=jnp.asarray(importance, jnp.float32))

  return init
