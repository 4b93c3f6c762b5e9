"""Pretraining: inputs, model, jitted steps per step kind, full-model eval, wired
into the host loop (`runner.run`) that fine-tuning drives too."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokendrop_jax import config_checks, config_lib, flops, importance
from tokendrop_jax.data import text_builder
from tokendrop_jax.model.bert import BertForPretraining
from tokendrop_jax.training import checkpoint, inputs, metrics as metrics_lib, optim, plots
from tokendrop_jax.training import host_rows, resume_fields, runner, sharding
from tokendrop_jax.training import state as state_lib
from tokendrop_jax.training import step as step_lib
from tokendrop_jax.training import step_plan
from tokendrop_jax.training import workdir as workdir_lib
from tokendrop_jax.training.input_settings import InputSettings

# What a resume must not change (resume_fields.PRETRAIN; names kept for the tests).
RESUME_FIELDS, RESUME_ADDED, RESUME_CANONICAL = resume_fields.PRETRAIN


@dataclasses.dataclass
class Run:
  """Everything built before the first step (no compile yet)."""
  config: ml_collections.ConfigDict
  model: BertForPretraining
  layout: state_lib.Layout
  init_state: Callable[[], state_lib.TrainState]
  train_steps: dict[step_plan.StepKind, Callable]  # one jitted step per kind
  eval_step: Callable


def build(config, special_ids, token_counts: Optional[np.ndarray] = None,
          devices=None) -> Run:
  """Model, mesh, shardings and jitted step functions for `config`."""
  config_checks.validate(config)
  td, data = config.token_drop, config.data
  mesh = sharding.make_checked_mesh(config, devices)
  # model.attention='auto' picks by the mesh's platform, not this host's backend: a
  # program compiled here for a TPU slice (tokendrop_jax.compile) gets the TPU kernel.
  cfg = config_lib.model_config(config, platform=mesh.devices.flat[0].platform)
  rules = sharding.rules_from_config(config.mesh.rules)
  model = BertForPretraining(cfg)
  optimizer, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
  imp0 = importance.init_importance(td.strategy, cfg.vocab_size, ema_init=td.ema_init,
                                    counts=token_counts)
  init_fn = state_lib.make_state_init(model, optimizer, data.seq_len, data.max_predictions_per_seq)
  rng = state_lib.base_key(config.train.seed, config.train.prng_impl)
  layout = state_lib.layout(init_fn, rng, imp0, mesh=mesh, rules=rules)
  init = layout.jit_init(lambda r: nn.unbox(init_fn(r, imp0)))
  batch_sh, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)

  def jit_step(kind: step_plan.StepKind):
    settings = step_plan.drop_settings(config, kind, special_ids)
    fn = step_lib.make_train_step(model, optimizer, schedule, settings,
                                  config.optim.grad_accum_steps,
                                  skip_nonfinite=config.train.nan_policy == "skip",
                                  prng_impl=config.train.prng_impl)
    return jax.jit(fn, in_shardings=(layout.sharding, batch_sh),
                   out_shardings=(layout.sharding, replicated), donate_argnums=0)

  # jax.jit compiles lazily: a kind the run never reaches costs nothing.
  train_steps = {kind: jit_step(kind) for kind in step_plan.kinds(config)}
  eval_step = jax.jit(step_lib.make_eval_step(model),
                      in_shardings=(layout.sharding.params, batch_sh), out_shardings=replicated)
  return Run(config, model, layout, lambda: init(rng), train_steps, eval_step)


def evaluate(run: Run, params, batches, plan: host_rows.ShardPlan) -> dict[str, float]:
  """Full-model MLM loss and accuracy over `batches` (this process's shards of each)."""
  totals = None
  with jax.set_mesh(run.layout.mesh), nn.logical_axis_rules(run.layout.rules):
    for batch in batches:
      sums = run.eval_step(params, host_rows.assemble_local(batch, plan, run.layout.mesh))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  weight = max(float(totals["weight_sum"]), 1.0)
  return {"loss": float(totals["loss_sum"]) / weight,
          "mlm_accuracy": float(totals["correct_sum"]) / weight}


def train_and_evaluate(config, workdir: str, devices=None, allow_changes=()) -> dict:
  """Pretrains (resuming from the latest checkpoint in `workdir`) -> final metrics.

  `devices`: the devices of the mesh (default all); a run may resume on another
  number of devices than it was checkpointed on. `allow_changes`: the fields of
  `resume_fields.PRETRAIN` a resume may change (recorded in the workdir).
  """
  config_checks.validate(config)
  config_checks.check_platform(config)
  sharding.make_checked_mesh(config, devices)  # before building a corpus that may take hours
  workdir = workdir_lib.create(workdir)
  changes = workdir_lib.check_resume(config, workdir, *resume_fields.PRETRAIN,
                                     allow=allow_changes)
  is_main = jax.process_index() == 0
  settings = InputSettings.of(config)  # all that the inputs read of the config
  dataset_dir, tok = inputs.prepare(settings, workdir)
  counts = (text_builder.load_token_counts(dataset_dir)
            if importance.get(config.token_drop.strategy).needs_counts else None)
  run = build(config, tok.special_ids, counts, devices=devices)
  workdir_lib.write_started_config(config, workdir)

  plan = host_rows.plan(run.layout.mesh, config.data.global_batch_size, config.data.num_shards)
  host_rows.log_plan(plan, run.layout.mesh, config.data.global_batch_size)
  train_iter = inputs.train_iterator(settings.batches, dataset_dir, plan)
  train = config.train
  ckpt = checkpoint.Checkpointer(workdir_lib.checkpoint_dir(workdir),
                                 save_every=train.checkpoint_every, keep=train.keep_checkpoints,
                                 async_save=train.async_checkpoint)
  state, start, host_state = runner.restore_or_init(ckpt, run.layout.abstract, run.init_state,
                                                    train_iter)
  workdir_lib.record_changes(workdir, start, changes)
  summary_path = workdir_lib.path(workdir, workdir_lib.SUMMARY_FILE)
  if start >= train.num_steps and workdir_lib.exists(summary_path):
    ckpt.close()  # already finished: keep its summary, metrics and plots as they are
    if is_main:
      print(f"already finished at step {start}; raise --config.train.num_steps to go on",
            flush=True)
    return workdir_lib.read_json(summary_path)
  writer = metrics_lib.MetricsWriter(workdir, is_main=is_main,
                                     resume_step=start if start else None)
  cfg, data = config_lib.model_config(config), config.data
  step_flops = {
      kind: flops.train_step_flops(cfg, data.global_batch_size, data.seq_len,
                                   data.max_predictions_per_seq, kind.keep_tokens,
                                   config.token_drop.layerwise, kind.consistency,
                                   config.token_drop.consistency_form == "paper")
      for kind in run.train_steps}
  peak = flops.peak_flops_per_device(jax.devices()[0].device_kind,
                                     train.peak_flops_per_device or None)
  last_eval: dict[str, float] = {}

  def do_eval(step, state):
    nonlocal last_eval
    batches = inputs.eval_iterator(settings.batches, dataset_dir, plan)
    last_eval = evaluate(run, state.params, batches, plan)
    writer.write_eval(step, last_eval)
    if is_main:
      print(f"eval step {step}: full-model loss {last_eval['loss']:.4f}, "
            f"MLM accuracy {last_eval['mlm_accuracy']:.4f}", flush=True)

  def step_fn(step):
    kind = step_plan.kind_at(config, step)
    return kind, run.train_steps[kind]

  def mfu(step, kind, step_time_s):
    del step
    if not peak:
      return {}
    return {"mfu": flops.mfu(step_flops[kind], step_time_s, jax.device_count(), peak)}

  job = runner.Job(
      num_steps=train.num_steps, log_every=train.log_every,
      checkpoint_every=train.checkpoint_every, nan_policy=train.nan_policy,
      tokens_per_step=data.global_batch_size * data.seq_len, step_fn=step_fn,
      batch=lambda step: host_rows.assemble_local(next(train_iter), plan, run.layout.mesh),
      eval_due=lambda step: step % train.eval_every == 0 or step == train.num_steps,
      evaluate=do_eval, data_iter=train_iter, extra_scalars=mfu)
  with checkpoint.closing(ckpt, writer):  # also on error, without hiding it
    result = runner.run(job, state, start, ckpt, writer, run.layout.mesh, run.layout.rules, host_state)

  summary = {
      "step": result.step,
      "train_time_s": result.train_time_s,
      "skipped_steps": result.skipped_steps,  # train.nan_policy=skip, over resumes too
      **{f"eval/{k}": v for k, v in last_eval.items()},
      "jit_cache_sizes": runner.compile_counts(
          {kind.name: fn for kind, fn in run.train_steps.items()}),
  }
  if is_main and result.step >= train.num_steps:
    summary["plot"] = plots.plot_metrics(writer.path,
                                         workdir_lib.path(workdir, workdir_lib.PLOT_FILE))
    workdir_lib.write_json(summary_path, summary)
  return summary
