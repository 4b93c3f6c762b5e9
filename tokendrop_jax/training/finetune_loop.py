"""GLUE fine-tuning: the full encoder from a pretraining run + a new pooler/classifier.

Same patterns as the pretraining loop (`loop.py`): one mesh, shardings from
logical axes, a pure jitted step with in/out shardings and donation, metrics
fetched a step late, orbax checkpoints, SIGTERM -> save and exit.

The data order is a pure function of (seed, epoch, step): each epoch is a
permutation drawn from `default_rng([seed, epoch])`, so the checkpointed step
alone resumes the exact batch sequence (no iterator state to save). The last
batch of an epoch is padded with weight-0 rows to keep shapes static.

Bad input fails before anything compiles: task files and headers, labels,
the pretraining workdir and its checkpoint, vocabulary and sequence sizes.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Callable, Optional

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from tokendrop_jax.data import glue
from tokendrop_jax.data.tokenizer import Tokenizer
from tokendrop_jax.model.bert import BertConfig, BertForSequenceClassification
from tokendrop_jax.training import checkpoint, metrics as metrics_lib, optim
from tokendrop_jax.training import preemption, pretrained, sharding
from tokendrop_jax.training.loop import NonFiniteLossError

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.tsv"
# Changing any of these between a stop and a resume would silently change the run.
RESUME_FIELDS = ("task", "init_from", "init_step", "tokenizer_model", "train_file",
                 "max_seq_len", "batch_size", "num_epochs", "seed", "learning_rate",
                 "warmup_fraction")
INPUT_KEYS = ("input_ids", "input_mask", "token_type_ids")


@flax.struct.dataclass
class FinetuneState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any      # {'bert', 'pooler', 'classifier'}
  opt_state: Any
  rng: jax.Array   # dropout key of step n is fold_in(rng, n): resume is exact


# ---------------------------------------------------------------------------
# Config and initialisation source.


def validate(config) -> glue.TaskSpec:
  """Field checks that need no files; returns the task spec."""
  spec = glue.get_task(config.task)
  if config.init_from is None:
    raise ValueError("init_from is required: --config.init_from=PRETRAIN_WORKDIR (or "
                     "--config.init_from='' for a randomly initialised encoder)")
  for name in ("max_seq_len", "batch_size", "num_epochs", "learning_rate", "log_every",
               "checkpoint_every", "keep_checkpoints"):
    v = config[name]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
      raise ValueError(f"config.{name} must be positive, got {v!r}")
  if config.eval_batch_size < 0:
    raise ValueError(f"config.eval_batch_size must be >= 0, got {config.eval_batch_size}")
  if not 0.0 <= config.warmup_fraction < 1.0:
    raise ValueError(f"config.warmup_fraction must be in [0, 1), got {config.warmup_fraction}")
  if config.weight_decay < 0:
    raise ValueError(f"config.weight_decay must be >= 0, got {config.weight_decay}")
  if config.eval_mismatched_file and spec.name != "mnli":
    raise ValueError(f"config.eval_mismatched_file is for mnli only, not {spec.name}")
  if config.eval_mismatched_file and not config.eval_file:
    raise ValueError("config.eval_mismatched_file needs config.eval_file (dev_matched.tsv)")
  return spec


@dataclasses.dataclass
class InitSource:
  """Where the encoder and tokenizer come from (params are read later)."""
  model_cfg: BertConfig
  tokenizer: Tokenizer
  workdir: str                # '' for random init
  pretrain_config: Optional[ml_collections.ConfigDict]


def _changed_model_fields(config) -> list[str]:
  default = dataclasses.asdict(BertConfig())
  return [k for k, v in config.model.items() if default.get(k) != v]


def resolve_init(config) -> InitSource:
  """Model config and tokenizer of the run; checks sizes against each other."""
  overrides = dict(dropout_rate=config.dropout_rate,
                   attention_dropout_rate=config.attention_dropout_rate)
  if config.dtype:
    overrides["dtype"] = config.dtype
  if config.init_from:
    changed = _changed_model_fields(config)
    if changed:
      raise ValueError(
          f"config.model.{changed[0]} is set, but the model's sizes come from "
          f"{pretrained.config_path(config.init_from)}; model.* only applies with "
          "--config.init_from='' (random init)")
    pre = pretrained.load_config(config.init_from)  # names a missing workdir / config.json
    if not pretrained.checkpoint_steps(config.init_from):
      raise FileNotFoundError(
          f"config.init_from={config.init_from!r} has no checkpoint in "
          f"{os.path.join(config.init_from, pretrained.CHECKPOINT_DIR)}: pretrain first, or "
          "point init_from at a run that saved one")
    try:
      model_cfg = dataclasses.replace(BertConfig.from_dict(pre.model.to_dict()), **overrides)
    except (ValueError, TypeError) as e:
      raise ValueError(f"{pretrained.config_path(config.init_from)}: bad model section: {e}") from None
    where = f"model.vocab_size={model_cfg.vocab_size} in {pretrained.config_path(config.init_from)}"
    tok_path = config.tokenizer_model or pretrained.tokenizer_path(config.init_from)
  else:
    pre = None
    model_cfg = dataclasses.replace(BertConfig.from_dict(config.model.to_dict()), **overrides)
    where = f"config.model.vocab_size={model_cfg.vocab_size}"
    if not config.tokenizer_model:
      raise ValueError("config.tokenizer_model is required with init_from='' (random init): "
                       "a SentencePiece model made by tokendrop_jax.data.tokenizer")
    tok_path = config.tokenizer_model
  model_cfg.validate()
  tok = Tokenizer(tok_path)
  if tok.vocab_size != model_cfg.vocab_size:
    raise ValueError(f"the tokenizer {tok_path} has {tok.vocab_size} pieces but {where}; "
                     "use the tokenizer the model was pretrained with")
  if config.max_seq_len > model_cfg.max_position:
    raise ValueError(f"config.max_seq_len={config.max_seq_len} exceeds the model's "
                     f"max_position={model_cfg.max_position}")
  return InitSource(model_cfg, tok, config.init_from or "", pre)


def _flat_shapes(tree) -> dict[str, tuple]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in leaves}


def load_encoder(init: InitSource, abstract_bert, step: Optional[int]):
  """The pretrained encoder params (numpy), checked against the model -> (params, step)."""
  params, _, step = pretrained.load_pretrained(init.workdir, step)
  where = os.path.join(init.workdir, pretrained.CHECKPOINT_DIR, str(step))
  if "bert" not in params:
    raise ValueError(f"{where}: no 'bert' encoder in the checkpoint's params "
                     f"(has {sorted(params)})")
  bert = params["bert"]
  rows = np.shape(bert.get("embeddings", {}).get("word", {}).get("embedding", ()))
  if rows and rows[0] != init.model_cfg.vocab_size:
    raise ValueError(f"{where}: the word embedding has {rows[0]} rows but model.vocab_size is "
                     f"{init.model_cfg.vocab_size} (config.json) and the tokenizer has "
                     f"{init.tokenizer.vocab_size} pieces: checkpoint and tokenizer differ")
  got, want = _flat_shapes(bert), _flat_shapes(abstract_bert)
  for path in sorted(set(got) | set(want)):
    if got.get(path) != want.get(path):
      raise ValueError(f"{where}: encoder param bert{path} has shape {got.get(path)} in the "
                       f"checkpoint but {want.get(path)} in the model of config.json")
  dtypes = jax.tree.map(lambda a: a.dtype, abstract_bert)
  return jax.tree.map(lambda x, d: np.asarray(x, d), bert, dtypes), step


# ---------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class TaskData:
  train: dict[str, np.ndarray]            # INPUT_KEYS + labels, [N, S] / [N]
  evals: dict[str, dict[str, np.ndarray]]  # 'dev' (+ 'dev_mismatched') -> arrays
  predict: Optional[dict[str, np.ndarray]]
  predict_index: list[str]
  sources: dict[str, str]


def load_data(config, spec: glue.TaskSpec, tok: Tokenizer) -> TaskData:
  """Reads and encodes every split the run needs (TSV files or TFDS)."""
  data_dir = config.tfds_data_dir or None

  def read(path, split, require_labels=True):
    if path:
      return glue.read_tsv(path, spec, require_labels=require_labels)
    return glue.read_tfds(spec, split, data_dir)

  train = read(config.train_file, "train")
  if train.labels is None:
    raise ValueError(f"{train.source}: training examples have no labels")
  if config.eval_file:
    eval_sources = {"dev": read(config.eval_file, None)}
    if config.eval_mismatched_file:
      eval_sources["dev_mismatched"] = read(config.eval_mismatched_file, None)
  else:
    names = ["dev"] + [f"dev_{s.split('_')[-1]}" for s in spec.eval_splits[1:]]
    eval_sources = {n: read("", s) for n, s in zip(names, spec.eval_splits)}
  for ex in eval_sources.values():
    if ex.labels is None:
      raise ValueError(f"{ex.source}: dev examples have no labels")
  predict, index = None, []
  if config.predict_file:
    ex = read(config.predict_file, None, require_labels=False)
    predict, index = glue.encode(ex, tok, config.max_seq_len), ex.index
  enc = lambda ex: glue.encode(ex, tok, config.max_seq_len)
  return TaskData(enc(train), {k: enc(v) for k, v in eval_sources.items()}, predict, index,
                  {"train": train.source, **{k: v.source for k, v in eval_sources.items()}})


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """The example order of one epoch: a pure function of (seed, epoch)."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def batch_rows(order: np.ndarray, index: int, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Rows [B] of batch `index` of an epoch and their weights [B] (0 = padding)."""
  rows = order[index * batch_size:(index + 1) * batch_size]
  weights = np.ones(batch_size, np.float32)
  if len(rows) < batch_size:
    weights[len(rows):] = 0.0
    rows = np.concatenate([rows, np.full(batch_size - len(rows), rows[0], rows.dtype)])
  return rows, weights


def host_batch(arrays: dict[str, np.ndarray], rows: np.ndarray, weights: np.ndarray,
               keys=None) -> dict[str, np.ndarray]:
  """This process's share of a global batch (contiguous, in process order)."""
  n, p = jax.process_count(), jax.process_index()
  local = len(rows) // n
  sl = slice(p * local, (p + 1) * local)
  out = {k: arrays[k][rows[sl]] for k in (keys or arrays)}
  out["weights"] = weights[sl]
  return out


# ---------------------------------------------------------------------------
# Steps (pure).


def example_loss(spec: glue.TaskSpec, logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example loss [B]: cross-entropy, or squared error for regression (STS-B)."""
  if spec.is_regression:
    return jnp.square(logits[:, 0] - labels)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def make_train_step(model, optimizer, schedule, spec: glue.TaskSpec) -> Callable:
  """`train_step(state, batch) -> (state, metrics)`; batch carries `weights` [B]."""

  def loss_fn(params, batch, rng):
    logits = model.apply({"params": params}, *(batch[k] for k in INPUT_KEYS),
                         deterministic=False, rngs={"dropout": rng})  # [B, num_labels]
    w = batch["weights"]
    total = jnp.maximum(w.sum(), 1.0)
    loss = (example_loss(spec, logits, batch["labels"]) * w).sum() / total
    return loss, (logits, total)

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, (logits, total)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "learning_rate": schedule(state.step),
               "grad_norm": optax.global_norm(grads)}
    if not spec.is_regression:
      hit = (jnp.argmax(logits, -1) == batch["labels"]).astype(jnp.float32)
      metrics["accuracy"] = (hit * batch["weights"]).sum() / total
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(model) -> Callable:
  def eval_step(params, batch):
    return model.apply({"params": params}, *(batch[k] for k in INPUT_KEYS))  # [B, num_labels]
  return eval_step


# ---------------------------------------------------------------------------
# Build.


@dataclasses.dataclass
class Run:
  """Everything built before the first step (no compile yet)."""
  spec: glue.TaskSpec
  model: BertForSequenceClassification
  mesh: jax.sharding.Mesh
  rules: Any
  state_sharding: Any
  abstract_state: Any
  init_state: Callable[[Optional[Any]], FinetuneState]  # pretrained bert params or None
  train_step: Callable
  eval_step: Callable
  steps_per_epoch: int
  num_steps: int
  eval_batch_size: int


def _check_batch(name: str, size: int, mesh) -> None:
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if size % shards:
    raise ValueError(f"config.{name}={size} must divide into mesh.data*mesh.fsdp={shards} "
                     "batch shards")
  if size % jax.process_count():
    raise ValueError(f"config.{name}={size} must divide into {jax.process_count()} processes")


def build(config, spec: glue.TaskSpec, model_cfg: BertConfig, num_train: int,
          devices=None) -> Run:
  """Model, mesh, shardings and jitted steps for a training set of `num_train` examples."""
  mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices)
  eval_batch = config.eval_batch_size or config.batch_size
  _check_batch("batch_size", config.batch_size, mesh)
  _check_batch("eval_batch_size", eval_batch, mesh)
  rules = sharding.rules_from_config(config.mesh.rules)
  steps_per_epoch = math.ceil(num_train / config.batch_size)
  num_steps = steps_per_epoch * config.num_epochs
  optim_cfg = ml_collections.ConfigDict(dict(
      learning_rate=config.learning_rate, weight_decay=config.weight_decay,
      warmup_steps=int(round(config.warmup_fraction * num_steps)), b1=config.adam_b1,
      b2=config.adam_b2, eps=config.adam_eps, grad_clip_norm=config.grad_clip_norm))
  optimizer, schedule = optim.make_optimizer(optim_cfg, num_steps)
  model = BertForSequenceClassification(model_cfg, spec.num_labels)

  def boxed_init(rng):
    params_rng, state_rng = jax.random.split(rng)
    ids = jnp.zeros((1, config.max_seq_len), jnp.int32)
    params = model.init({"params": params_rng}, ids, ids, ids)["params"]
    return FinetuneState(step=jnp.zeros((), jnp.int32), params=params,
                         opt_state=optimizer.init(params), rng=state_rng)

  rng = jax.random.PRNGKey(config.seed)
  boxed = jax.eval_shape(boxed_init, rng)
  state_sharding = sharding.param_shardings(boxed, mesh, rules)
  abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), nn.unbox(boxed),
      state_sharding)

  def init_state(bert=None):
    """Fresh state; `bert` (host numpy tree) replaces the random encoder."""
    def init(r, b):
      state = nn.unbox(boxed_init(r))
      if b is not None:  # Adam's moments start at zero whatever the params.
        state = state.replace(params={**state.params, "bert": b})
      return state

    if bert is not None:  # Global arrays from host data (every process holds all of it).
      bert = jax.tree.map(
          lambda x, a: jax.make_array_from_callback(x.shape, a.sharding, lambda i: x[i]),
          bert, abstract_state.params["bert"])
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      return jax.jit(init, out_shardings=state_sharding)(rng, bert)

  batch_sh = sharding.batch_sharding(mesh)
  train_step = jax.jit(make_train_step(model, optimizer, schedule, spec),
                       in_shardings=(state_sharding, batch_sh),
                       out_shardings=(state_sharding, sharding.replicated(mesh)),
                       donate_argnums=0)
  eval_step = jax.jit(make_eval_step(model), in_shardings=(state_sharding.params, batch_sh),
                      out_shardings=sharding.replicated(mesh))
  return Run(spec, model, mesh, rules, state_sharding, abstract_state, init_state, train_step,
             eval_step, steps_per_epoch, num_steps, eval_batch)


def predict_logits(run: Run, params, arrays: dict[str, np.ndarray]) -> np.ndarray:
  """Full-model logits [N, num_labels] of every row of `arrays`, on the host."""
  n, b = len(arrays["input_ids"]), run.eval_batch_size
  out = []
  with jax.set_mesh(run.mesh), nn.logical_axis_rules(run.rules):
    for start in range(0, n, b):
      rows, weights = batch_rows(np.arange(start, min(start + b, n)), 0, b)
      batch = host_batch(arrays, rows, weights, keys=INPUT_KEYS)
      del batch["weights"]
      logits = run.eval_step(params, sharding.make_global_batch(batch, run.mesh))
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


# ---------------------------------------------------------------------------
# Files.


def check_workdir_config(config, workdir: str) -> None:
  """Refuses to resume a workdir started with fields that change the run."""
  path = os.path.join(workdir, CONFIG_FILE)
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not (os.path.exists(path) and os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir)):
    return  # nothing to resume: any config may start here
  with open(path) as f:
    saved = json.load(f)
  new = json.loads(config.to_json_best_effort())
  for key in RESUME_FIELDS + ("model",):
    if key in saved and saved[key] != new.get(key):
      raise ValueError(f"config.{key}={new.get(key)!r} but the run in {workdir} was started with "
                       f"{saved[key]!r} ({path}); use another --workdir or the same config")


def _atomic_write(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_predictions(path: str, spec: glue.TaskSpec, index: list[str], preds) -> None:
  """GLUE's submission layout: `index\\tprediction`, one line per input row."""
  lines = ["index\tprediction"] + [f"{i}\t{glue.format_label(spec, p)}"
                                   for i, p in zip(index, preds)]
  _atomic_write(path, "\n".join(lines) + "\n")


def results_from_metrics(metrics_path: str, spec: glue.TaskSpec) -> dict:
  """Per-epoch dev metrics from metrics.jsonl; best by the dev score, and last."""
  rows = metrics_lib.read_metrics(metrics_path) if os.path.exists(metrics_path) else []
  epochs = [{k[len("eval/"):]: v for k, v in r.items() if k.startswith("eval/")}
            | {"step": r["step"]} for r in rows if "eval/score" in r]
  for e in epochs:
    e["epoch"] = int(e["epoch"])
  best = max(epochs, key=lambda e: e["score"]) if epochs else None
  init_steps = [int(r["init_step"]) for r in rows if "init_step" in r]
  return {"task": spec.name, "metrics": list(spec.metrics),
          "init_step": init_steps[-1] if init_steps else None, "best": best,
          "last": epochs[-1] if epochs else None, "epochs": epochs}


# ---------------------------------------------------------------------------
# The loop.


def train_and_evaluate(config, workdir: str) -> dict:
  """Fine-tunes (resuming from `workdir`'s latest checkpoint) -> summary dict."""
  spec = validate(config)
  workdir = str(workdir)
  if "://" not in workdir:
    workdir = os.path.abspath(workdir)  # orbax needs absolute paths
  os.makedirs(workdir, exist_ok=True)
  check_workdir_config(config, workdir)
  is_main = jax.process_index() == 0
  init = resolve_init(config)
  data = load_data(config, spec, init.tokenizer)
  run = build(config, spec, init.model_cfg, len(data.train["input_ids"]))
  if is_main:
    _atomic_write(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))

  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 save_every=config.checkpoint_every,
                                 keep=config.keep_checkpoints, async_save=config.async_checkpoint)
  init_step = None
  if ckpt.latest_step() is not None:
    state, start = ckpt.restore(run.abstract_state)
    logging.info("Resumed from step %d", start)
  else:
    bert = None
    if init.workdir:
      bert, init_step = load_encoder(init, run.abstract_state.params["bert"], config.init_step)
    state, start = run.init_state(bert), 0
  # Records after the restored step came from the interrupted run: dropped.
  writer = metrics_lib.MetricsWriter(workdir, is_main=is_main, resume_step=start)
  if start == 0 and init.workdir:
    writer.write(0, {"init_step": init_step})  # results.json reports it after a resume too
  spe, num_steps, bsz = run.steps_per_epoch, run.num_steps, config.batch_size
  tokens_per_step = bsz * config.max_seq_len
  if is_main and start == 0:
    print(f"fine-tuning {spec.name}: {len(data.train['input_ids'])} train examples "
          f"({data.sources['train']}), {config.num_epochs} epochs x {spe} steps, "
          f"init {init.workdir or 'random'}" + (f" step {init_step}" if init.workdir else ""),
          flush=True)

  orders: dict[int, np.ndarray] = {}
  n_train = len(data.train["input_ids"])
  last_eval: dict[str, float] = {}
  window = {"t": time.perf_counter(), "step": start}
  t_start = time.perf_counter()

  def flush(pending, now):
    step, device_metrics = pending
    m = jax.device_get(device_metrics)
    if not np.isfinite(m["loss"]):
      raise NonFiniteLossError(
          f"loss is {m['loss']} at step {step}; stopping. The last good checkpoint (step "
          f"{ckpt.latest_step()}) is kept in {ckpt.directory}. Lower config.learning_rate.")
    if step % config.log_every == 0 or step == num_steps:
      dt = (now - window["t"]) / max(step - window["step"], 1)
      out = {k: float(v) for k, v in m.items()}
      out.update(step_time_s=dt, tokens_per_s=tokens_per_step / dt,
                 epoch=(step - 1) // spe + 1)
      writer.write(step, out)
      if is_main:
        line = metrics_lib.format_progress(step, num_steps, out, now - t_start, start_step=start)
        acc = f" | acc {out['accuracy']:.3f}" if "accuracy" in out else ""
        print(f"epoch {out['epoch']}/{config.num_epochs} | {line}{acc}", flush=True)
      window.update(t=now, step=step)

  def do_eval(step):
    nonlocal last_eval
    last_eval = evaluate(run, state.params, data.evals)
    writer.write_eval(step, {**last_eval, "epoch": step // spe})
    if is_main:
      shown = ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items())
      print(f"eval epoch {step // spe}/{config.num_epochs} (step {step}): {shown}", flush=True)

  step, pending = start, None
  with checkpoint.closing(ckpt, writer):  # also on error, without hiding it
    with preemption.PreemptionGuard() as guard, jax.set_mesh(run.mesh), \
        nn.logical_axis_rules(run.rules):
      while step < num_steps:
        epoch, index = divmod(step, spe)
        if epoch not in orders:
          orders.clear()
          orders[epoch] = epoch_order(config.seed, epoch, n_train)
        rows, weights = batch_rows(orders[epoch], index, bsz)
        batch = sharding.make_global_batch(host_batch(data.train, rows, weights), run.mesh)
        state, device_metrics = run.train_step(state, batch)
        if pending is not None:
          flush(pending, time.perf_counter())
        step += 1
        pending = (step, device_metrics)
        epoch_end = step % spe == 0
        stop = guard.should_stop(step)
        if epoch_end or stop or step % config.checkpoint_every == 0:
          flush(pending, time.perf_counter())  # a NaN must not be evaluated or saved
          pending = None
          t0 = time.perf_counter()
          if epoch_end:
            do_eval(step)
          ckpt.save(step, state, force=stop or step == num_steps)
          window["t"] += time.perf_counter() - t0  # eval/save time is not step time
        if stop:
          logging.warning("Preemption signal: saved step %d; exiting.", step)
          print(f"stopped by signal at step {step}; checkpoint saved in {ckpt.directory}",
                flush=True)
          break
      if pending is not None:
        flush(pending, time.perf_counter())

  summary: dict[str, Any] = {"step": step, "num_steps": num_steps,
                             **{f"eval/{k}": v for k, v in last_eval.items()},
                             "jit_cache_size": run.train_step._cache_size()}  # pylint: disable=protected-access
  if step < num_steps:
    return summary
  if data.predict is not None:
    preds = glue.predictions_from_logits(spec, predict_logits(run, state.params, data.predict))
    path = os.path.join(workdir, PREDICTIONS_FILE)
    if is_main:
      write_predictions(path, spec, data.predict_index, preds)
      print(f"wrote {len(preds)} predictions to {path}", flush=True)
    summary["predictions"] = path
  if is_main:
    results = results_from_metrics(writer.path, spec)
    results.update(init_from=init.workdir, num_steps=num_steps, sources=data.sources)
    _atomic_write(os.path.join(workdir, RESULTS_FILE), json.dumps(results, indent=2))
    summary["results"] = results
  return summary
