"""GLUE fine-tuning: the full encoder of a pretraining run + a new pooler/classifier,
wired into the host loop (`runner.run`) that pretraining drives too.

Where the parts live: the config schema in `config_lib`, its checks in `config_checks`, the
encoder's source in `pretrained`, examples and batches in `data.glue_batches`,
the pure steps in `finetune_step`. Bad input fails before anything compiles:
task files and headers, labels, the pretraining workdir and its checkpoint,
vocabulary and sequence sizes.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tokendrop_jax import config_checks
from tokendrop_jax.data import glue
from tokendrop_jax.data import glue_batches as batches_lib
from tokendrop_jax.model.bert import BertForSequenceClassification
from tokendrop_jax.model.config import BertConfig
from tokendrop_jax.training import checkpoint, finetune_step, metrics as metrics_lib, optim
from tokendrop_jax.training import host_rows, pretrained, resume_fields, runner, sharding
from tokendrop_jax.training import state as state_lib
from tokendrop_jax.training import workdir as workdir_lib

# What a resume must not change (resume_fields.FINETUNE; names kept for the tests).
RESUME_FIELDS, RESUME_ADDED, RESUME_CANONICAL = resume_fields.FINETUNE


@dataclasses.dataclass
class Run:
  """Everything built before the first step (no compile yet)."""
  spec: glue.TaskSpec
  model: BertForSequenceClassification
  layout: state_lib.Layout
  init_state: Callable[[Optional[Any]], finetune_step.FinetuneState]  # pretrained bert or None
  train_step: Callable
  eval_step: Callable
  steps_per_epoch: int
  num_steps: int
  eval_batch_size: int


def build(config, spec: glue.TaskSpec, model_cfg: BertConfig, num_train: int,
          devices=None) -> Run:
  """Model, mesh, shardings and jitted steps for a training set of `num_train` examples."""
  mesh = sharding.make_checked_mesh(config, devices)
  rules = sharding.rules_from_config(config.mesh.rules)
  data = config.data
  steps_per_epoch = math.ceil(num_train / data.global_batch_size)
  num_steps = steps_per_epoch * config.train.num_epochs
  optimizer, schedule = optim.make_optimizer(config.optim, num_steps)
  model = BertForSequenceClassification(model_cfg, spec.num_labels)

  def boxed_init(rng):
    params_rng, state_rng = jax.random.split(rng)
    ids = jnp.zeros((1, data.seq_len), jnp.int32)
    params = model.init({"params": params_rng}, ids, ids, ids)["params"]
    return finetune_step.FinetuneState(step=jnp.zeros((), jnp.int32), params=params,
                                       opt_state=optimizer.init(params),
                                       rng=state_lib.key_bits(state_rng))

  rng = state_lib.base_key(config.train.seed, config.train.prng_impl)
  layout = state_lib.layout(boxed_init, rng, mesh=mesh, rules=rules)

  def init(r, bert):
    state = nn.unbox(boxed_init(r))
    if bert is not None:  # Adam's moments start at zero whatever the params.
      state = state.replace(params={**state.params, "bert": bert})
    return state

  jitted_init = layout.jit_init(init)

  def init_state(bert=None):
    """Fresh state; `bert` (host numpy tree) replaces the random encoder."""
    if bert is not None:  # Global arrays from host data (every process holds all of it).
      bert = jax.tree.map(
          lambda x, a: jax.make_array_from_callback(x.shape, a.sharding, lambda i: x[i]),
          bert, layout.abstract.params["bert"])
    return jitted_init(rng, bert)

  batch_sh, replicated = sharding.batch_sharding(mesh), sharding.replicated(mesh)
  train_step = jax.jit(
      finetune_step.make_train_step(model, optimizer, schedule, spec,
                                    skip_nonfinite=config.train.nan_policy == "skip",
                                    prng_impl=config.train.prng_impl),
      in_shardings=(layout.sharding, batch_sh), out_shardings=(layout.sharding, replicated),
      donate_argnums=0)
  eval_step = jax.jit(finetune_step.make_eval_step(model),
                      in_shardings=(layout.sharding.params, batch_sh), out_shardings=replicated)
  return Run(spec, model, layout, init_state, train_step, eval_step, steps_per_epoch,
             num_steps, data.eval_batch_size or data.global_batch_size)


def predict_logits(run: Run, params, arrays: dict[str, np.ndarray]) -> np.ndarray:
  """Full-model logits [N, num_labels] of every row of `arrays`, on the host."""
  n, b = len(arrays["input_ids"]), run.eval_batch_size
  out = []
  with jax.set_mesh(run.layout.mesh), nn.logical_axis_rules(run.layout.rules):
    for start in range(0, n, b):
      rows, weights = batches_lib.batch_rows(np.arange(start, min(start + b, n)), 0, b)
      batch = batches_lib.global_batch(arrays, rows, weights, keys=finetune_step.INPUT_KEYS)
      del batch["weights"]
      logits = run.eval_step(params, host_rows.from_global(batch, run.layout.mesh))
      out.append(np.asarray(jax.device_get(logits))[:int(weights.sum())])
  return np.concatenate(out)


def evaluate(run: Run, params, evals: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
  """Task metrics of each dev split: 'dev' keys bare, others as '<split>/<metric>'."""
  out = {}
  for name, arrays in evals.items():
    preds = glue.predictions_from_logits(run.spec, predict_logits(run, params, arrays))
    m = glue.compute_metrics(run.spec, arrays["labels"], preds)
    out.update({(k if name == "dev" else f"{name}/{k}"): v for k, v in m.items()})
  return out


def predictions_tsv(spec: glue.TaskSpec, index: list[str], preds) -> str:
  """GLUE's submission layout: `index\\tprediction`, one line per input row."""
  lines = ["index\tprediction"] + [f"{i}\t{glue.format_label(spec, p)}"
                                   for i, p in zip(index, preds)]
  return "\n".join(lines) + "\n"


def results_from_metrics(metrics_path: str, spec: glue.TaskSpec) -> dict:
  """Per-epoch dev metrics from metrics.jsonl; best by the dev score, and last."""
  rows = (metrics_lib.read_metrics(metrics_path)
          if workdir_lib.exists(metrics_path) else [])
  epochs = [{k[len("eval/"):]: v for k, v in r.items() if k.startswith("eval/")}
            | {"step": r["step"]} for r in rows if "eval/score" in r]
  for e in epochs:
    e["epoch"] = int(e["epoch"])
  best = max(epochs, key=lambda e: e["score"]) if epochs else None
  init_steps = [int(r["init_step"]) for r in rows if "init_step" in r]
  return {"task": spec.name, "metrics": list(spec.metrics),
          "init_step": init_steps[-1] if init_steps else None, "best": best,
          "last": epochs[-1] if epochs else None, "epochs": epochs}


def train_and_evaluate(config, workdir: str, devices=None, allow_changes=()) -> dict:
  """Fine-tunes (resuming from `workdir`'s latest checkpoint) -> summary dict.

  `devices`: the mesh's devices in mesh order (default all); the results do
  not depend on their order or on the number of processes.
  """
  config_checks.validate(config)
  config_checks.check_platform(config)
  spec = glue.get_task(config.task)
  workdir = workdir_lib.create(workdir)
  changes = workdir_lib.check_resume(config, workdir, *resume_fields.FINETUNE,
                                     allow=allow_changes)
  is_main = jax.process_index() == 0
  init = pretrained.resolve_init(config)
  data = batches_lib.load_data(batches_lib.GlueFiles.of(config.data), spec, init.tokenizer)
  n_train = len(data.train["input_ids"])
  run = build(config, spec, init.model_cfg, n_train, devices)
  workdir_lib.write_started_config(config, workdir)

  train = config.train
  ckpt = checkpoint.Checkpointer(workdir_lib.checkpoint_dir(workdir),
                                 save_every=train.checkpoint_every, keep=train.keep_checkpoints,
                                 async_save=train.async_checkpoint)
  init_step = None

  def fresh_state():
    nonlocal init_step
    bert = None
    if init.workdir:
      bert, init_step = pretrained.load_encoder(init, run.layout.abstract.params["bert"],
                                                config.init_step)
    return run.init_state(bert)

  state, start, host_state = runner.restore_or_init(ckpt, run.layout.abstract, fresh_state)
  workdir_lib.record_changes(workdir, start, changes)
  # Records after the restored step came from the interrupted run: dropped.
  writer = metrics_lib.MetricsWriter(workdir, is_main=is_main, resume_step=start)
  if start == 0 and init.workdir:
    writer.write(0, {"init_step": init_step})  # results.json reports it after a resume too
  spe, num_steps, bsz = run.steps_per_epoch, run.num_steps, config.data.global_batch_size
  if is_main and start == 0:
    print(f"fine-tuning {spec.name}: {n_train} train examples ({data.sources['train']}), "
          f"{train.num_epochs} epochs x {spe} steps, init {init.workdir or 'random'}"
          + (f" step {init_step}" if init.workdir else ""), flush=True)

  orders: dict[int, np.ndarray] = {}
  last_eval: dict[str, float] = {}

  def batch(step):
    epoch, index = divmod(step, spe)
    if epoch not in orders:
      orders.clear()
      orders[epoch] = batches_lib.epoch_order(config.data.seed, epoch, n_train)
    rows, weights = batches_lib.batch_rows(orders[epoch], index, bsz)
    return host_rows.from_global(batches_lib.global_batch(data.train, rows, weights),
                                 run.layout.mesh)

  def do_eval(step, state):
    nonlocal last_eval
    last_eval = evaluate(run, state.params, data.evals)
    writer.write_eval(step, {**last_eval, "epoch": step // spe})
    if is_main:
      shown = ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items())
      print(f"eval epoch {step // spe}/{train.num_epochs} (step {step}): {shown}", flush=True)

  epoch_of = lambda step: (step - 1) // spe + 1
  job = runner.Job(
      num_steps=num_steps, log_every=train.log_every, checkpoint_every=train.checkpoint_every,
      nan_policy=train.nan_policy, tokens_per_step=bsz * config.data.seq_len,
      step_fn=lambda step: ("train", run.train_step), batch=batch,
      eval_due=lambda step: step % spe == 0, evaluate=do_eval,
      extra_scalars=lambda step, kind, dt: {"epoch": epoch_of(step)},
      line_prefix=lambda step: f"epoch {epoch_of(step)}/{train.num_epochs} | ")
  with checkpoint.closing(ckpt, writer):  # also on error, without hiding it
    result = runner.run(job, state, start, ckpt, writer, run.layout.mesh, run.layout.rules,
                        host_state)

  summary: dict[str, Any] = {"step": result.step, "num_steps": num_steps,
                             "train_time_s": result.train_time_s,
                             "skipped_steps": result.skipped_steps,
                             **{f"eval/{k}": v for k, v in last_eval.items()},
                             "jit_cache_sizes": runner.compile_counts({"train": run.train_step})}
  if result.step < num_steps:
    return summary
  if data.predict is not None:
    preds = glue.predictions_from_logits(spec, predict_logits(run, result.state.params,
                                                              data.predict))
    path = workdir_lib.path(workdir, workdir_lib.PREDICTIONS_FILE)
    if is_main:
      workdir_lib.atomic_write(path, predictions_tsv(spec, data.predict_index, preds))
      print(f"wrote {len(preds)} predictions to {path}", flush=True)
    summary["predictions"] = path
  if is_main:
    results = results_from_metrics(writer.path, spec)
    results.update(init_from=init.workdir, num_steps=num_steps, sources=data.sources)
    workdir_lib.write_json(workdir_lib.path(workdir, workdir_lib.RESULTS_FILE), results)
    summary["results"] = results
  return summary
