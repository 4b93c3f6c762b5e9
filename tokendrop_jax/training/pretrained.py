"""What fine-tuning and export take from a pretraining run: config, tokenizer, params.

The files are named by `training.workdir`. Only `state.params` is read: the
optimizer state (twice the params' size, and of a structure that depends on
the optimizer config) is never restored or even described, so any optimizer,
token-drop strategy or mesh reads the same. `resolve_init` and `load_encoder`
check everything a fine-tuning run takes from there against each other
(sizes, vocabulary, tokenizer) before anything compiles.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Optional

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from tokendrop_jax import config_fields, config_lib, files
from tokendrop_jax.data.tokenizer import Tokenizer, load_tokenizer
from tokendrop_jax.data.wordpiece import WordPieceTokenizer
from tokendrop_jax.model.config import BertConfig
from tokendrop_jax.training import fingerprint
from tokendrop_jax.training import workdir as workdir_lib

STATE_ITEM = "state"


def _config_path(workdir) -> str:
  return workdir_lib.path(workdir, workdir_lib.CONFIG_FILE)


class LayoutError(ValueError):
  """The files are readable but are not a tokendrop_jax pretraining run."""


def _saved_fingerprint(step_dir: epath.Path) -> dict[str, list] | None:
  """The Checkpointer's per-leaf fingerprint from the step metadata, if any."""
  meta_file = step_dir / "_CHECKPOINT_METADATA"
  if not meta_file.exists():
    return None
  try:
    custom = json.loads(meta_file.read_text()).get("custom_metadata") or {}
  except ValueError:
    return None
  fp = custom.get("fingerprint")
  return fp if isinstance(fp, dict) else None


def restore_params(step_dir) -> dict[str, Any]:
  """`state.params` of one checkpoint step, as a pytree of numpy arrays.

  Partial restore through the PyTree handler, with a shape-only target built
  from the saved metadata of `params`: only the params' arrays are read (the
  optimizer state's small metadata files are, its arrays are not).
  """
  step_dir = epath.Path(files.resolve(step_dir))  # not .absolute(): it mangles gs:// URLs
  state_dir = step_dir / STATE_ITEM
  if not state_dir.exists():
    raise LayoutError(
        f"{step_dir} has no '{STATE_ITEM}' item: not a tokendrop_jax "
        "pretraining checkpoint.")
  handler = ocp.PyTreeCheckpointHandler()
  try:
    meta = handler.metadata(state_dir)
    tree = getattr(meta, "tree", meta)
    if not isinstance(tree, dict) or "params" not in tree:
      raise LayoutError(
          f"{state_dir} holds no 'params': not a tokendrop_jax train state "
          f"(top-level entries: {sorted(tree) if isinstance(tree, dict) else type(tree)}).")
    saved = tree["params"]
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved)
    out = handler.restore(state_dir, args=ocp.args.PyTreeRestore(
        item={"params": target}, restore_args={"params": restore_args},
        partial_restore=True))
  finally:
    handler.close()
  params = out["params"]
  expected = _saved_fingerprint(step_dir)
  if expected:
    fingerprint.verify({"params": params}, expected, str(state_dir))
  return params


def load_pretrained(workdir, step: int | None = None):
  """(params, config, step) of a pretraining workdir's checkpoint.

  `params`: the model's param tree (`{'bert': ..., 'mlm': ...}`) as numpy
  arrays on the host. `step=None` takes the latest readable step; an
  unreadable or corrupt newer step is logged and skipped (nothing is moved).
  """
  config = workdir_lib.read_config(workdir)
  root = epath.Path(workdir_lib.checkpoint_dir(workdir))
  steps = workdir_lib.checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f"No checkpoint in {root}: train first, or point "
                            "--workdir at a pretraining run that saved one.")
  if step is not None:
    if int(step) not in steps:
      raise FileNotFoundError(f"No checkpoint for step {step} in {root}; have {steps}.")
    return restore_params(root / str(int(step))), config, int(step)
  errors = []
  for s in reversed(steps):
    try:
      params = restore_params(root / str(s))
    except LayoutError:
      raise  # Wrong layout: an older step will not be better.
    except Exception as e:  # pylint: disable=broad-except
      logging.error("Checkpoint %s is unreadable or corrupt (%s: %s); trying the "
                    "previous step.", root / str(s), type(e).__name__, str(e)[:300])
      errors.append(f"step {s}: {type(e).__name__}: {str(e)[:300]}")
      continue
    if errors:
      logging.warning("Using checkpoint step %d: newer step(s) were unreadable.", s)
    return params, config, s
  raise RuntimeError(f"No readable checkpoint in {root}: " + "; ".join(errors))


# ---------------------------------------------------------------------------
# Fine-tuning's start: which encoder, which tokenizer, and do they fit.


@dataclasses.dataclass
class InitSource:
  """Where the encoder and tokenizer come from (params are read later)."""
  model_cfg: BertConfig
  tokenizer: Tokenizer | WordPieceTokenizer
  workdir: str                # '' for random init
  pretrain_config: Optional[ml_collections.ConfigDict]


def resolve_init(config) -> InitSource:
  """Model config and tokenizer of a fine-tuning run; checks sizes against each other.

  The sizes come from the pretraining run's config.json; the fields
  fine-tuning sets for itself (`config_lib.FINETUNE_MODEL_FIELDS`) from `config`.
  """
  own = {k: config.model[k] for k in config_lib.FINETUNE_MODEL_FIELDS
         if config.model[k] is not None}
  tok_path = config.data.tokenizer_model
  if config.init_from:
    pre = workdir_lib.read_config(config.init_from)  # names a missing workdir / config.json
    if not workdir_lib.checkpoint_steps(config.init_from):
      raise FileNotFoundError(
          f"config.init_from={config.init_from!r} has no checkpoint in "
          f"{workdir_lib.checkpoint_dir(config.init_from)}: pretrain first, or "
          "point init_from at a run that saved one")
    try:
      model_cfg = dataclasses.replace(BertConfig.from_dict(pre.model.to_dict()), **own)
    except (ValueError, TypeError) as e:
      raise ValueError(f"{_config_path(config.init_from)}: bad model section: {e}") from None
    where = f"model.vocab_size={model_cfg.vocab_size} in {_config_path(config.init_from)}"
    tok_path = tok_path or workdir_lib.tokenizer_path(config.init_from)
  else:
    pre = None
    model_cfg = config_lib.model_config(config)
    where = f"config.model.vocab_size={model_cfg.vocab_size}"
    if not tok_path:
      raise ValueError("config.data.tokenizer_model is required with init_from='' (random "
                       "init): a SentencePiece .model, tokenizer.json or BERT vocab.txt")
  model_cfg.validate()
  try:
    tok = load_tokenizer(tok_path, config_fields.lowercase_option(config.data.get("lowercase")))
  except ValueError as e:
    raise ValueError(f"config.data.tokenizer_model / data.lowercase: {e}") from None
  if tok.vocab_size != model_cfg.vocab_size:
    raise ValueError(f"the tokenizer {tok_path} has {tok.vocab_size} pieces but {where}; "
                     "use the tokenizer the model was pretrained with")
  if config.data.seq_len > model_cfg.max_position:
    raise ValueError(f"config.data.seq_len={config.data.seq_len} exceeds the model's "
                     f"max_position={model_cfg.max_position}")
  return InitSource(model_cfg, tok, config.init_from or "", pre)


def _flat_shapes(tree) -> dict[str, tuple]:
  return {path: tuple(np.shape(x)) for path, x in fingerprint.flat(tree).items()}


def load_encoder(init: InitSource, abstract_bert, step: Optional[int]):
  """The pretrained encoder params (numpy), checked against the model -> (params, step)."""
  params, _, step = load_pretrained(init.workdir, step)
  where = os.path.join(workdir_lib.checkpoint_dir(init.workdir), str(step))
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
      raise ValueError(f"{where}: encoder param bert/{path} has shape {got.get(path)} in the "
                       f"checkpoint but {want.get(path)} in the model of config.json")
  dtypes = jax.tree.map(lambda a: a.dtype, abstract_bert)
  return jax.tree.map(lambda x, d: np.asarray(x, d), bert, dtypes), step
