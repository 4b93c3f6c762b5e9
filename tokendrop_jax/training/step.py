"""The pure train and eval steps: `state, batch -> state, metrics`.

The train step picks the kept tokens (static `keep`), runs the token-dropping
model forward and backward, applies AdamW, and updates the importance vector
from the per-prediction MLM loss. Options beyond the paper (`DropSettings`):
layer-wise random subsets and ScTD's [CLS] consistency term. The eval step
always runs the full model: that is the model users fine-tune and export.

Batch layout (from `data.pipeline`), all global arrays:
  input_ids, input_mask, token_type_ids   int32 [batch, seq]
  masked_lm_positions, masked_lm_ids      int32 [batch, P]
  masked_lm_weights                       float32 [batch, P]
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from tokendrop_jax import importance as imp
from tokendrop_jax.model import token_drop
from tokendrop_jax.training.state import TrainState, step_key

Batch = dict


@dataclasses.dataclass(frozen=True)
class DropSettings:
  """How the train step selects tokens. `keep_tokens=None` = full model.

  layerwise: one random subset per middle layer (random-LTD) instead of one
    for the whole middle block; needs a strategy whose scores are fresh
    draws (`Strategy.per_draw`, e.g. "random").
  consistency_weight: > 0 adds ScTD's KL term between a full-model pass and
    the token-dropping pass (both with the same dropout masks). 0 = the
    paper's step.
  consistency_form: "head" (our variant): the MLM head's distribution at
    [CLS] of the last layer, the full pass a stop-gradient target, the term
    weighted per sequence. "paper" (the authors' fairseq code): softmax of the
    raw [CLS] hidden states of each of the last two layers, gradients through
    both passes, the batch's sum normalised like the MLM loss (per masked token).
  random_ties: break exact ties between scores at random (seeded by the
    step's rng) instead of keeping the leftmost positions.
  """
  strategy: str = "none"
  keep_tokens: Optional[int] = None
  special_ids: Sequence[int] = ()
  ema_beta: float = 0.995
  layerwise: bool = False
  consistency_weight: float = 0.0
  consistency_form: str = "head"
  random_ties: bool = False

  @property
  def drops(self) -> bool:
    return imp.get(self.strategy).drops and self.keep_tokens is not None

  def full(self) -> "DropSettings":
    """The same settings without dropping (importance still updated)."""
    return dataclasses.replace(self, keep_tokens=None, consistency_weight=0.0)


def _keep_indices(settings: DropSettings, importance: jax.Array, batch: Batch,
                  rng: jax.Array, middle_layers: int) -> Optional[jax.Array]:
  """None, [batch, keep], or [middle_layers, batch, keep] (layer-wise)."""
  if not settings.drops:
    return None

  def select(r):
    scores = imp.get(settings.strategy).scores(importance, batch["input_ids"], r)
    tie_rng = jax.random.fold_in(r, 1) if settings.random_ties else None
    return token_drop.select_kept(scores, batch["input_ids"], batch["input_mask"],
                                  settings.special_ids, settings.keep_tokens, tie_rng)

  if settings.layerwise:
    return jax.vmap(select)(jax.random.split(rng, middle_layers))
  return select(rng)


def keep_if_finite(finite: jax.Array, new, old):
  """`new` where `finite` (a bool scalar) else `old`, leaf by leaf: a skipped update."""
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)


def cls_kl(target_logits: jax.Array, logits: jax.Array) -> jax.Array:
  """KL(softmax(target) || softmax(logits)) per row: [..., n] x2 -> [...]."""
  target = jax.nn.log_softmax(target_logits.astype(jnp.float32))
  return jnp.sum(jnp.exp(target) * (target - jax.nn.log_softmax(logits.astype(jnp.float32))),
                 axis=-1)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """-log softmax(logits)[label] per row, in float32: [..., vocab], [...] int -> [...].

  The label's logit is picked by comparing with an iota, not by a gather (optax's
  `softmax_cross_entropy_with_integer_labels`): a gather's gradient is a scatter-add into
  a zeroed float32 copy of the logits ([batch, P, vocab], 300 MB at bert_base's batch 128)
  that the backward pass then reads twice more; the compare's is elementwise and fuses
  with the softmax's. A label outside [0, vocab) picks nothing (loss = the log-sum-exp).
  """
  logits = logits.astype(jnp.float32)
  picked = labels[..., None] == jnp.arange(logits.shape[-1], dtype=labels.dtype)
  return jax.nn.logsumexp(logits, axis=-1) - jnp.sum(jnp.where(picked, logits, 0.0), axis=-1)


PAPER_CLS_LAYERS = 2  # ScTD's authors compare the last two layers' [CLS] states


def make_loss_fn(model, settings: DropSettings) -> Callable:
  """`loss_fn(params, batch, keep_idx, dropout_rng, kl_scale, full_params=None)`
  -> (weighted MLM sum + kl_scale * KL summed over the batch, (per_slot, correct, kl)).

  `full_params` (default `params`) feed ScTD's full-model pass, so a test can
  see whether the gradient reaches that pass.
  """
  consistency = settings.drops and settings.consistency_weight > 0
  paper = settings.consistency_form == "paper"

  def apply(params, batch, positions, keep_idx, dropout_rng, cls_layers=0):
    return model.apply({"params": params}, batch["input_ids"], batch["input_mask"],
                       batch["token_type_ids"], positions, keep_idx,
                       deterministic=False, rngs={"dropout": dropout_rng}, cls_layers=cls_layers)

  def loss_fn(params, batch, keep_idx, dropout_rng, kl_scale, full_params=None):
    full_params = params if full_params is None else full_params
    positions = batch["masked_lm_positions"]  # [batch, P]
    kl = jnp.zeros((), jnp.float32)
    if consistency and paper:
      logits, cls = apply(params, batch, positions, keep_idx, dropout_rng, PAPER_CLS_LAYERS)
      _, full_cls = apply(full_params, batch, positions[:, :1], None, dropout_rng,
                          PAPER_CLS_LAYERS)  # [2, batch, hidden] each; gradients flow in both
      kl = cls_kl(full_cls, cls).sum()
    elif consistency:  # [CLS] (position 0) rides along with the masked positions
      positions = jnp.concatenate([jnp.zeros_like(positions[:, :1]), positions], axis=1)
      logits = apply(params, batch, positions, keep_idx, dropout_rng)  # [batch, 1+P, vocab]
      full_cls = apply(full_params, batch, positions[:, :1], None, dropout_rng)[:, 0]
      kl = cls_kl(jax.lax.stop_gradient(full_cls), logits[:, 0]).sum()
      logits = logits[:, 1:]
    else:
      logits = apply(params, batch, positions, keep_idx, dropout_rng)  # [batch, P, vocab]
    per_slot = cross_entropy(logits, batch["masked_lm_ids"])
    correct = (jnp.argmax(logits, -1) == batch["masked_lm_ids"]).astype(jnp.float32)
    # The gradient is of the weighted *sum*; the step divides by the global
    # weight, so microbatches of an accumulated step add up to the full batch.
    mlm_sum = (per_slot * batch["masked_lm_weights"]).sum()
    return mlm_sum + kl_scale * kl, (per_slot, correct, kl)

  return loss_fn


def make_train_step(model, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    settings: DropSettings, grad_accum_steps: int = 1,
                    skip_nonfinite: bool = False, prng_impl: str = "threefry") -> Callable:
  """Returns `train_step(state, batch) -> (state, metrics)` (not yet jitted).

  With `skip_nonfinite`, a step whose loss or gradient is NaN/Inf leaves params,
  optimizer state and importance unchanged (decided on device, no host sync)
  and reports `skipped=1`; the step counter still advances past the batch.
  `prng_impl` (`train.prng_impl`) reads `state.rng`'s bits: the one the state was made with.
  """

  consistency = settings.drops and settings.consistency_weight > 0
  update_importance = imp.get(settings.strategy).update
  middle_layers = model.cfg.num_layers - 1 - model.cfg.split_layer
  loss_fn = make_loss_fn(model, settings)

  grad_fn = jax.grad(loss_fn, has_aux=True)

  def microbatch_grads(params, importance, batch, rng, kl_scale):
    score_rng, dropout_rng = jax.random.split(rng)
    keep_idx = _keep_indices(settings, importance, batch, score_rng, middle_layers)
    return grad_fn(params, batch, keep_idx, dropout_rng, kl_scale)  # grads, (per_slot, correct, kl)

  def train_step(state: TrainState, batch: Batch):
    rng = step_key(state.rng, state.step, prng_impl)
    weights = batch["masked_lm_weights"]  # [batch, P]
    total_weight = jnp.maximum(weights.sum(), 1.0)
    num_seqs = weights.shape[0]
    # After the division by the total weight: "head", weight * mean over sequences;
    # "paper", weight * sum over sequences / masked tokens (fairseq's normalisation).
    kl_scale = settings.consistency_weight * (
        1.0 if settings.consistency_form == "paper" else total_weight / num_seqs)
    if grad_accum_steps == 1:
      grads, (per_slot, correct, kl) = microbatch_grads(state.params, state.importance, batch,
                                                        rng, kl_scale)
    else:
      split = lambda x: x.reshape((grad_accum_steps, -1) + x.shape[1:])

      def body(acc, xs):
        i, mb = xs
        g, aux = microbatch_grads(state.params, state.importance, mb, jax.random.fold_in(rng, i),
                                  kl_scale)
        return jax.tree.map(jnp.add, acc, g), aux

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      grads, (per_slot, correct, kl) = jax.lax.scan(
          body, zeros, (jnp.arange(grad_accum_steps), jax.tree.map(split, batch)))
      per_slot, correct = per_slot.reshape(weights.shape), correct.reshape(weights.shape)
      kl = kl.sum()
    grads = jax.tree.map(lambda g: g / total_weight, grads)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    importance = state.importance
    if update_importance is not None:
      importance = update_importance(importance, batch["masked_lm_ids"], per_slot, weights,
                                     beta=settings.ema_beta, special_ids=settings.special_ids)
    loss = (per_slot * weights).sum() / total_weight
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
      params, opt_state, importance = keep_if_finite(
          finite, (params, opt_state, importance),
          (state.params, state.opt_state, state.importance))
    metrics = {
        "loss": loss,
        "mlm_accuracy": (correct * weights).sum() / total_weight,
        "grad_norm": grad_norm,
        "skipped": 1.0 - finite.astype(jnp.float32),
        "learning_rate": schedule(state.step),
        "kept_fraction": jnp.float32(
            settings.keep_tokens / batch["input_ids"].shape[1] if settings.drops else 1.0),
    }
    if consistency:
      metrics["consistency_kl"] = kl / num_seqs  # mean over sequences, before the weight
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              importance=importance)
    return new_state, metrics

  return train_step


def make_eval_step(model) -> Callable:
  """Returns `eval_step(params, batch) -> sums` for the full model (no dropping).

  Sums (not means) so that batches of any weight combine exactly.
  """

  def eval_step(params, batch: Batch):
    logits = model.apply({"params": params}, batch["input_ids"], batch["input_mask"],
                         batch["token_type_ids"], batch["masked_lm_positions"], None,
                         deterministic=True)
    weights = batch["masked_lm_weights"]
    per_slot = cross_entropy(logits, batch["masked_lm_ids"])
    correct = (jnp.argmax(logits, -1) == batch["masked_lm_ids"]).astype(jnp.float32)
    return {"loss_sum": (per_slot * weights).sum(), "correct_sum": (correct * weights).sum(),
            "weight_sum": weights.sum()}

  return eval_step
