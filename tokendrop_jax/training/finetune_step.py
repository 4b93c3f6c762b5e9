"""The pure fine-tuning steps: `state, batch -> state, metrics` and full-model logits.

Batch layout (from `data.glue_batches`), all global arrays:
  input_ids, input_mask, token_type_ids   int32 [batch, seq]
  labels                                  int32 [batch] (float32 for regression)
  weights                                 float32 [batch]; 0 = a padding row
"""
from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax

from tokendrop_jax.data import glue
from tokendrop_jax.training.state import step_key
from tokendrop_jax.training.step import keep_if_finite

INPUT_KEYS = ("input_ids", "input_mask", "token_type_ids")


@flax.struct.dataclass
class FinetuneState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any      # {'bert', 'pooler', 'classifier'}
  opt_state: Any
  rng: jax.Array   # uint32 key data; step n's dropout key is fold_in(rng, n): resume is exact


def example_loss(spec: glue.TaskSpec, logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example loss [B]: cross-entropy, or squared error for regression (STS-B)."""
  if spec.is_regression:
    return jnp.square(logits[:, 0] - labels)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_train_step(model, optimizer, schedule, spec: glue.TaskSpec,
                    skip_nonfinite: bool = False, prng_impl: str = "threefry") -> Callable:
  """`train_step(state, batch) -> (state, metrics)`; batch carries `weights` [B].

  With `skip_nonfinite`, a step whose loss or gradient is NaN/Inf leaves params
  and optimizer state unchanged and reports `skipped=1` (as pretraining's step).
  `prng_impl`: `train.prng_impl`, the one `state.rng` was made with.
  """

  def loss_fn(params, batch, rng):
    logits = model.apply({"params": params}, *(batch[k] for k in INPUT_KEYS),
                         deterministic=False, rngs={"dropout": rng})  # [B, num_labels]
    w = batch["weights"]
    total = jnp.maximum(w.sum(), 1.0)
    loss = (example_loss(spec, logits, batch["labels"]) * w).sum() / total
    return loss, (logits, total)

  def train_step(state, batch):
    rng = step_key(state.rng, state.step, prng_impl)
    (loss, (logits, total)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
      params, opt_state = keep_if_finite(finite, (params, opt_state),
                                         (state.params, state.opt_state))
    metrics = {"loss": loss, "learning_rate": schedule(state.step), "grad_norm": grad_norm,
               "skipped": 1.0 - finite.astype(jnp.float32)}
    if not spec.is_regression:
      hit = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
      metrics["accuracy"] = (hit * batch["weights"]).sum() / total
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(model) -> Callable:
  def eval_step(params, batch):
    return model.apply({"params": params}, *(batch[k] for k in INPUT_KEYS))  # [B, num_labels]
  return eval_step
