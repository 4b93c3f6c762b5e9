"""The pretraining loop: mesh, state, jitted steps, metrics, checkpoints.

Side effects live here and in the mains; the step functions stay pure. The host
never waits for the device on the hot path: metrics of step n are fetched while
step n+1 runs, except on checkpoint steps (a NaN must never be saved).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tokendrop_jax import config_lib, flops, importance
from tokendrop_jax.data import text_builder
from tokendrop_jax.model.bert import BertForPretraining
from tokendrop_jax.training import checkpoint, inputs, metrics as metrics_lib, optim
from tokendrop_jax.training import preemption, sharding
from tokendrop_jax.training import state as state_lib
from tokendrop_jax.training import step as step_lib
from tokendrop_jax.training import step_plan

CONFIG_FILE = "config.json"


class NonFiniteLossError(RuntimeError):
  """The loss went NaN/Inf; the last good checkpoint is kept."""


def check_workdir_config(config, workdir: str) -> None:
  """Refuses a workdir whose saved config has another model or sequence shape."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    saved = json.load(f)
  new = json.loads(config.to_json_best_effort())
  fields = [("model", k) for k in new["model"]] + [("data", "seq_len"),
                                                    ("data", "max_predictions_per_seq")]
  for section, key in fields:
    old_v, new_v = saved.get(section, {}).get(key), new[section][key]
    if old_v != new_v:
      raise ValueError(f"{section}.{key}={new_v!r} but the run in {workdir} was started with "
                       f"{old_v!r} ({path}); use another --workdir or the same config")


def _write_config(config, workdir: str) -> None:
  if jax.process_index() == 0:
    tmp = os.path.join(workdir, CONFIG_FILE + ".tmp")
    with open(tmp, "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(tmp, os.path.join(workdir, CONFIG_FILE))


def make_checked_mesh(config, devices=None) -> jax.sharding.Mesh:
  """The mesh of `config` on `devices`; ValueError naming the field if it does not fit."""
  data = config.data
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices)
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if data.global_batch_size % (batch_shards * config.optim.grad_accum_steps):
    raise ValueError(f"data.global_batch_size={data.global_batch_size} must divide into "
                     f"mesh.data*mesh.fsdp={batch_shards} shards "
                     f"(x optim.grad_accum_steps={config.optim.grad_accum_steps})")
  if data.global_batch_size % jax.process_count():
    raise ValueError(f"data.global_batch_size={data.global_batch_size} must divide into "
                     f"{jax.process_count()} processes")
  return mesh


@dataclasses.dataclass
class Run:
  """Everything built before the first step (no compile yet)."""
  config: ml_collections.ConfigDict
  model: BertForPretraining
  mesh: jax.sharding.Mesh
  rules: Any
  state_sharding: Any
  abstract_state: Any
  init_state: Callable[[], state_lib.TrainState]
  train_steps: dict[step_plan.StepKind, Callable]  # one jitted step per kind
  eval_step: Callable
  batch_sharding: jax.sharding.NamedSharding


def build(config, special_ids, token_counts: Optional[np.ndarray] = None,
          devices=None) -> Run:
  """Model, mesh, shardings and jitted step functions for `config`."""
  config_lib.validate(config)
  cfg = config_lib.model_config(config)
  td, data = config.token_drop, config.data
  mesh = make_checked_mesh(config, devices)
  rules = sharding.rules_from_config(config.mesh.rules)
  model = BertForPretraining(cfg)
  optimizer, schedule = optim.make_optimizer(config.optim, config.train.num_steps)
  imp0 = importance.init_importance(
      td.strategy if td.strategy != "none" else "loss_ema", cfg.vocab_size,
      ema_init=td.ema_init, counts=token_counts)
  init_fn = state_lib.make_state_init(model, optimizer, data.seq_len, data.max_predictions_per_seq)
  rng = jax.random.PRNGKey(config.train.seed)
  boxed = jax.eval_shape(init_fn, rng, imp0)
  state_sharding = sharding.param_shardings(boxed, mesh, rules)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed),
      state_sharding)

  def init_state():
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return jax.jit(lambda r: nn.unbox(init_fn(r, imp0)), out_shardings=state_sharding)(rng)

  batch_sh = sharding.batch_sharding(mesh)
  replicated = sharding.replicated(mesh)

  def jit_step(kind: step_plan.StepKind):
    settings = step_lib.DropSettings(
        strategy=td.strategy, keep_tokens=kind.keep_tokens, special_ids=tuple(special_ids),
        ema_beta=td.ema_beta, layerwise=td.layerwise,
        consistency_weight=td.consistency_weight if kind.consistency else 0.0)
    fn = step_lib.make_train_step(model, optimizer, schedule, settings,
                                  config.optim.grad_accum_steps,
                                  skip_nonfinite=config.train.nan_policy == "skip")
    return jax.jit(fn, in_shardings=(state_sharding, batch_sh),
                   out_shardings=(state_sharding, replicated), donate_argnums=0)

  # jax.jit compiles lazily: a kind the run never reaches costs nothing.
  train_steps = {kind: jit_step(kind) for kind in step_plan.kinds(config)}
  eval_step = jax.jit(step_lib.make_eval_step(model),
                      in_shardings=(state_sharding.params, batch_sh), out_shardings=replicated)
  return Run(config, model, mesh, rules, state_sharding, abstract_state, init_state, train_steps,
             eval_step, batch_sh)


def evaluate(run: Run, params, batches) -> dict[str, float]:
  """Full-model MLM loss and accuracy over `batches` (host iterable)."""
  totals = None
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
    for batch in batches:
      sums = run.eval_step(params, sharding.make_global_batch(batch, run.mesh))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  weight = max(float(totals["weight_sum"]), 1.0)
  return {"loss": float(totals["loss_sum"]) / weight,
          "mlm_accuracy": float(totals["correct_sum"]) / weight}


def _device_peak(config) -> Optional[float]:
  return metrics_lib.peak_flops_per_device(jax.devices()[0].device_kind,
                                           config.train.peak_flops_per_device or None)


def train_and_evaluate(config, workdir: str, devices=None) -> dict:
  """Pretrains (resuming from the latest checkpoint in `workdir`) -> final metrics.

  `devices`: the devices of the mesh (default all); a run may resume on another
  number of devices than it was checkpointed on.
  """
  config_lib.validate(config)
  workdir = str(workdir)
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)  # orbax needs absolute paths
  make_checked_mesh(config, devices)  # before building a corpus that may take hours
  os.makedirs(workdir, exist_ok=True)
  check_workdir_config(config, workdir)
  is_main = jax.process_index() == 0
  dataset_dir, tok = inputs.prepare(config, workdir)
  counts = (text_builder.load_token_counts(dataset_dir)
            if config.token_drop.strategy == "frequency" else None)
  run = build(config, tok.special_ids, counts, devices=devices)
  _write_config(config, workdir)

  train_iter = inputs.train_iterator(config, dataset_dir)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 save_every=config.train.checkpoint_every,
                                 keep=config.train.keep_checkpoints,
                                 async_save=config.train.async_checkpoint)
  if ckpt.latest_step() is not None:
    state, start = ckpt.restore(run.abstract_state, train_iter)
    logging.info("Resumed from step %d", start)
    if is_main:
      print(f"resumed from checkpoint step {start} in {ckpt.directory}", flush=True)
  else:
    state, start = run.init_state(), 0
  summary_path = os.path.join(workdir, "summary.json")
  if start >= config.train.num_steps and os.path.exists(summary_path):
    ckpt.close()  # already finished: keep its summary, metrics and plots as they are
    if is_main:
      print(f"already finished at step {start}; raise --config.train.num_steps to go on",
            flush=True)
    with open(summary_path) as f:
      return json.load(f)
  writer = metrics_lib.MetricsWriter(workdir, is_main=is_main,
                                     resume_step=start if start else None)
  cfg, data, train = config_lib.model_config(config), config.data, config.train
  tokens_per_step = data.global_batch_size * data.seq_len
  step_flops = {
      kind: flops.train_step_flops(cfg, data.global_batch_size, data.seq_len,
                                   data.max_predictions_per_seq, kind.keep_tokens,
                                   config.token_drop.layerwise, kind.consistency)
      for kind in run.train_steps}
  peak = _device_peak(config)
  last_eval: dict[str, float] = {}

  def do_eval(step, params):
    nonlocal last_eval
    last_eval = evaluate(run, params, inputs.eval_iterator(config, dataset_dir))
    writer.write_eval(step, last_eval)
    if is_main:
      print(f"eval step {step}: full-model loss {last_eval['loss']:.4f}, "
            f"MLM accuracy {last_eval['mlm_accuracy']:.4f}", flush=True)

  pending = None  # (step, device metrics, step kind) of the step before
  window = {"t": time.perf_counter(), "step": start}  # start of the current logging window
  t_start = time.perf_counter()
  train_time_s = 0.0
  skipped_steps = 0

  def flush(pending, now):
    """Fetches a finished step's metrics; logs them; stops on NaN."""
    nonlocal train_time_s, skipped_steps
    step, device_metrics, kind = pending
    m = jax.device_get(device_metrics)
    finite = np.isfinite(m["loss"]) and np.isfinite(m.get("grad_norm", 0.0))
    if not finite and config.train.nan_policy == "stop":
      # A NaN gradient with a finite loss would save NaN params at this step.
      raise NonFiniteLossError(
          f"loss is {m['loss']} (gradient norm {m.get('grad_norm')}) at step {step}; stopping. "
          f"The last good checkpoint (step {ckpt.latest_step()}) is kept in {ckpt.directory}. Lower "
          f"optim.learning_rate or set train.nan_policy=skip to skip bad batches.")
    if m.get("skipped", 0.0) > 0:
      skipped_steps += 1
      logging.warning("Non-finite loss/gradient at step %d: update skipped (%d so far).",
                      step, skipped_steps)
      if is_main:
        print(f"step {step}: non-finite loss/gradient, update skipped "
              f"({skipped_steps} skipped so far)", flush=True)
    if step % train.log_every == 0 or step == train.num_steps:
      n = step - window["step"]
      dt = (now - window["t"]) / max(n, 1)
      train_time_s_now = train_time_s + (now - window["t"])
      out = {k: float(v) for k, v in m.items()}
      out.update(step_time_s=dt, tokens_per_s=tokens_per_step / dt,
                 train_time_s=train_time_s_now)
      if peak:
        out["mfu"] = metrics_lib.mfu(step_flops[kind], dt, jax.device_count(), peak)
      writer.write(step, out)
      if is_main:
        print(metrics_lib.format_progress(step, train.num_steps, out, now - t_start,
                                          start_step=start), flush=True)
      train_time_s = train_time_s_now
      window.update(t=now, step=step)

  step = start
  with checkpoint.closing(ckpt, writer):  # also on error, without hiding it
    with preemption.PreemptionGuard() as guard, jax.set_mesh(run.mesh), \
        nn.logical_axis_rules(run.rules):
      while step < train.num_steps:
        batch = sharding.make_global_batch(next(train_iter), run.mesh)
        kind = step_plan.kind_at(config, step)
        state, device_metrics = run.train_steps[kind](state, batch)
        if pending is not None:
          flush(pending, time.perf_counter())
        step += 1
        pending = (step, device_metrics, kind)
        at_save = step % train.checkpoint_every == 0 or step == train.num_steps
        stop = guard.should_stop(step)
        if at_save or stop or step % train.eval_every == 0:
          flush(pending, time.perf_counter())  # a NaN must not be saved or evaluated
          pending = None
          if step % train.eval_every == 0 or step == train.num_steps:
            eval_t0 = time.perf_counter()
            do_eval(step, state.params)
            window["t"] += time.perf_counter() - eval_t0  # eval time is not step time
          ckpt.save(step, state, train_iter, force=stop or step == train.num_steps)
        if stop:
          logging.warning("Preemption signal: saved step %d; exiting.", step)
          print(f"stopped by signal at step {step}; checkpoint saved in {ckpt.directory}",
                flush=True)
          break
      if pending is not None:
        flush(pending, time.perf_counter())

  summary = {
      "step": step,
      "train_time_s": train_time_s,
      "skipped_steps": skipped_steps,  # train.nan_policy=skip: updates dropped in this process
      **{f"eval/{k}": v for k, v in last_eval.items()},
      # Compiles per step function: 1 once used, never more (no recompiles).
      "jit_cache_sizes": {kind.name: fn._cache_size()  # pylint: disable=protected-access
                          for kind, fn in run.train_steps.items()},
  }
  if is_main and step >= train.num_steps:
    plot = metrics_lib.plot_metrics(writer.path, os.path.join(workdir, "plots", "loss.png"))
    summary["plot"] = str(plot)
    with open(summary_path, "w") as f:
      json.dump(summary, f, indent=2)
  return summary
