"""Reading a pretraining workdir: its config, tokenizer and checkpointed params.

Shared by the exporter and fine-tuning. A pretraining workdir looks like

  WORKDIR/config.json            config.to_json_best_effort() of the run
  WORKDIR/tokenizer.model        the SentencePiece model
  WORKDIR/checkpoints/<step>/    orbax composite: item `state` (the TrainState)
                                 and, optionally, item `data` (iterator)

Only `state.params` is read: the optimizer state (twice the params' size, and
of a structure that depends on the optimizer config) is never restored or
even described, so any optimizer, token-drop strategy or mesh reads the same.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from tokendrop_jax.training import checkpoint as ckpt_lib

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
CHECKPOINT_DIR = "checkpoints"
STATE_ITEM = "state"


class LayoutError(ValueError):
  """The files are readable but are not a tokendrop_jax pretraining run."""


def config_path(workdir) -> str:
  return os.fspath(epath.Path(workdir) / CONFIG_FILE)


def tokenizer_path(workdir) -> str:
  """WORKDIR/tokenizer.model; FileNotFoundError naming it when absent."""
  path = epath.Path(workdir) / TOKENIZER_FILE
  if not path.exists():
    raise FileNotFoundError(
        f"No tokenizer at {path}: not a pretraining workdir (the train main "
        f"writes {TOKENIZER_FILE} next to {CONFIG_FILE}).")
  return os.fspath(path)


def _check_workdir(workdir) -> epath.Path:
  path = epath.Path(workdir)
  if not path.exists():
    raise FileNotFoundError(f"Pretraining workdir {path} does not exist.")
  if not path.is_dir():
    raise NotADirectoryError(f"Pretraining workdir {path} is not a directory.")
  return path


def load_config(workdir) -> ml_collections.ConfigDict:
  """The run's config from WORKDIR/config.json."""
  path = _check_workdir(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(
        f"No {CONFIG_FILE} in {path.parent}: not a pretraining workdir "
        "(the train main writes it at start).")
  try:
    d = json.loads(path.read_text())
  except ValueError as e:
    raise ValueError(f"{path}: not valid JSON: {e}") from None
  if not isinstance(d, dict) or "model" not in d:
    raise ValueError(f"{path}: not a tokendrop_jax config (no 'model' section).")
  return ml_collections.ConfigDict(d)


def checkpoint_steps(workdir) -> list[int]:
  """Finished checkpoint steps in WORKDIR/checkpoints, ascending.

  Names that are not plain integers (orbax temp dirs, `<step>.corrupt`
  quarantined by the Checkpointer) are not steps.
  """
  root = _check_workdir(workdir) / CHECKPOINT_DIR
  if not root.exists():
    return []
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())


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
  step_dir = epath.Path(step_dir)
  state_dir = step_dir / STATE_ITEM
  if not state_dir.exists():
    raise LayoutError(
        f"{step_dir} has no '{STATE_ITEM}' item: not a tokendrop_jax "
        "pretraining checkpoint.")
  handler = ocp.PyTreeCheckpointHandler()
  try:
    meta = handler.metadata(state_dir.absolute())
    tree = getattr(meta, "tree", meta)
    if not isinstance(tree, dict) or "params" not in tree:
      raise LayoutError(
          f"{state_dir} holds no 'params': not a tokendrop_jax train state "
          f"(top-level entries: {sorted(tree) if isinstance(tree, dict) else type(tree)}).")
    saved = tree["params"]
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), saved)
    out = handler.restore(state_dir.absolute(), args=ocp.args.PyTreeRestore(
        item={"params": target}, restore_args={"params": restore_args},
        partial_restore=True))
  finally:
    handler.close()
  params = out["params"]
  expected = _saved_fingerprint(step_dir)
  if expected:
    got = ckpt_lib.fingerprint({"params": params})
    for path, (h, dtype) in got.items():
      if path in expected and expected[path] != [h, dtype]:
        raise IOError(f"{state_dir}: {path} does not match the fingerprint "
                      "recorded at save time (corrupt file).")
  return params


def load_pretrained(workdir, step: int | None = None):
  """(params, config, step) of a pretraining workdir's checkpoint.

  `params`: the model's param tree (`{'bert': ..., 'mlm': ...}`) as numpy
  arrays on the host. `step=None` takes the latest readable step; an
  unreadable or corrupt newer step is logged and skipped (nothing is moved).
  """
  config = load_config(workdir)
  root = epath.Path(workdir) / CHECKPOINT_DIR
  steps = checkpoint_steps(workdir)
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
