"""A run's folder: what is in it, and the one module that reads and writes it.

  WORKDIR/config.json        the run's config as it started (checked on resume, never rewritten)
  WORKDIR/config_changes.jsonl  the changes a resume was allowed to make, with their step
  WORKDIR/tokenizer.model    the SentencePiece model (pretraining; copied or trained),
   or tokenizer.json         or the WordPiece tokenizer (`find_tokenizer` says which)
  WORKDIR/corpus/            the built-in or TFDS-sampled text (pretraining)
  WORKDIR/data/              the ArrayRecord dataset, unless data.dataset_dir is set
  WORKDIR/checkpoints/<step>/  orbax: item `state` (+ `data`, the grain iterator)
  WORKDIR/metrics.jsonl, tensorboard/, plots/loss.png
  WORKDIR/summary.json       pretraining's end-of-run summary
  WORKDIR/results.json, predictions.tsv   fine-tuning's outputs

Every writer and reader (the loops, the input preparation, `pretrained`,
export) names these files through here. A file another process or a later
run may read is written atomically, so a crash never leaves half of one
behind. Bytes move through `tokendrop_jax.files`, so the same calls serve a
local folder and a bucket (gs://...).
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable, Mapping

import jax
import ml_collections

from tokendrop_jax import files

CONFIG_FILE = "config.json"
CHANGES_FILE = "config_changes.jsonl"
TOKENIZER_FILE = "tokenizer.model"  # SentencePiece
TOKENIZER_JSON = "tokenizer.json"   # WordPiece (an HF tokenizer.json)
TOKENIZER_FILES = (TOKENIZER_FILE, TOKENIZER_JSON)  # tokenizer.SAVED_NAMES; one is there
CORPUS_DIR = "corpus"
DATA_DIR = "data"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
PLOT_FILE = os.path.join("plots", "loss.png")
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.json"
PREDICTIONS_FILE = "predictions.tsv"


resolve = files.resolve          # an absolute local path, or a URL (gs://...) unchanged
atomic_write = files.atomic_write
atomic_copy = files.copy_file
write_json = files.write_json
read_json = files.read_json


def path(workdir, *names: str) -> str:
  return files.join(workdir, *names)


def create(workdir) -> str:
  """Resolves and creates `workdir` -> its resolved path; ValueError naming it when
  nothing can be written there (a missing bucket, a read-only folder)."""
  workdir = resolve(workdir)
  files.check_writable(workdir, "--workdir")
  files.makedirs(workdir)
  return workdir


def exists(workdir, *names: str) -> bool:
  return files.exists(path(workdir, *names))


# ---------------------------------------------------------------------------
# The run's config.


def write_config(config, workdir) -> None:
  """WORKDIR/config.json (process 0 only)."""
  if jax.process_index() == 0:
    atomic_write(path(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))


def write_started_config(config, workdir) -> None:
  """config.json at a run's start; a resumed run keeps the one it started with (its
  allowed changes are in config_changes.jsonl)."""
  if not (exists(workdir, CONFIG_FILE) and checkpoint_steps(workdir)):
    write_config(config, workdir)


def _check_dir(workdir) -> None:
  if not files.exists(workdir):
    raise FileNotFoundError(f"Pretraining workdir {workdir} does not exist.")
  if not files.isdir(workdir):
    raise NotADirectoryError(f"Pretraining workdir {workdir} is not a directory.")


def _read_changes(workdir) -> list[dict]:
  source = path(workdir, CHANGES_FILE)
  if not files.exists(source):
    return []
  return [json.loads(line) for line in files.read_text(source).splitlines() if line.strip()]


def _apply_changes(saved: dict, changes: list[dict]) -> dict:
  """`saved` (a config dict) with each recorded change's new value, in order."""
  for record in changes:
    for key, (_, new) in record["changes"].items():
      section = saved
      *parents, leaf = key.split(".")
      for name in parents:
        section = section.setdefault(name, {})
      section[leaf] = new
  return saved


def read_config(workdir) -> ml_collections.ConfigDict:
  """The config of the run in `workdir`: as it started, with the changes resumes were
  allowed to make (config_changes.jsonl); errors name the file."""
  _check_dir(workdir)
  source = path(workdir, CONFIG_FILE)
  if not files.exists(source):
    raise FileNotFoundError(
        f"No {CONFIG_FILE} in {workdir}: not a pretraining workdir "
        "(the train main writes it at start).")
  try:
    d = read_json(source)
  except ValueError as e:
    raise ValueError(f"{source}: not valid JSON: {e}") from None
  if not isinstance(d, dict) or "model" not in d:
    raise ValueError(f"{source}: not a tokendrop_jax config (no 'model' section).")
  return ml_collections.ConfigDict(_apply_changes(d, _read_changes(workdir)))


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def check_resume(config, workdir, fields: Iterable[str],
                 added: Mapping[str, Any] | None = None,
                 canonical: Mapping[str, Callable[[Any], Any]] | None = None,
                 allow: Iterable[str] = ()) -> dict[str, tuple[Any, Any]]:
  """Refuses to resume a run started with other values of `fields`, naming every one.

  `fields` are dotted names; a section name ('model') covers all its fields. The run's
  values are its config.json with the changes earlier resumes were allowed to make.
  `added`: fields newer than some workdirs, with the value their runs had; other fields
  a workdir's config.json lacks predate it and are not compared.
  `canonical`: {field: fn} for fields with several spellings of one value
  (model.remat True == "full"), compared as fn(value).
  `allow`: fields (or sections) the user means to change. Returns every field that
  differs, {field: (old, new)}, for `record_changes`: allowed ones and those outside
  `fields` (train.num_steps, the mesh, ...), so the run's config stays what it ran with.
  Only a workdir with a checkpoint is checked: before one exists, nothing
  would be resumed and any config may start there.
  """
  source = path(workdir, CONFIG_FILE)
  if not (files.exists(source) and checkpoint_steps(workdir)):
    return {}
  started = _flat(_apply_changes(read_json(source), _read_changes(workdir)))
  saved = {**dict(added or {}), **started}
  new = _flat(json.loads(config.to_json_best_effort()))
  allow = [a.strip() for a in allow if a.strip()]
  for name in allow:
    if not any(k == name or k.startswith(name + ".") for k in new):
      raise ValueError(f"--allow_change={name}: no such config field")
  for key, fn in (canonical or {}).items():
    for values in (saved, new):
      if key in values:
        values[key] = fn(values[key])
  covered = lambda key, names: any(key == n or key.startswith(n + ".") for n in names)  # noqa: E731
  differ = {k: (saved.get(k), new.get(k)) for k in sorted(set(saved) | set(new))
            if saved.get(k) != new.get(k) and (k in started or k in new)}
  # A field the workdir's config.json predates (and `added` does not know) is not compared.
  refused = {k: v for k, v in differ.items()
             if covered(k, fields) and k in saved and not covered(k, allow)}
  if refused:
    what = "; ".join(f"{k}={n!r} but the run in {workdir} was started with {o!r}"
                     for k, (o, n) in refused.items())
    raise ValueError(
        f"{what} ({source}). Resume with the run's own settings, use another --workdir, or "
        f"name what you mean to change: --allow_change={','.join(refused)} (recorded in "
        f"{CHANGES_FILE})")
  return differ


def record_changes(workdir, step: int, changes: Mapping[str, tuple[Any, Any]]) -> None:
  """Appends a resume's allowed changes, with the step it resumed from (process 0)."""
  if not changes or jax.process_index() != 0:
    return
  target = path(workdir, CHANGES_FILE)
  before = files.read_text(target) if files.exists(target) else ""
  line = json.dumps({"step": step, "changes": {k: list(v) for k, v in changes.items()}})
  atomic_write(target, before + line + "\n")


# ---------------------------------------------------------------------------
# What a pretraining run left for fine-tuning and export.


def checkpoint_dir(workdir) -> str:
  return path(workdir, CHECKPOINT_DIR)


def checkpoint_steps(workdir) -> list[int]:
  """Finished checkpoint steps, ascending.

  Names that are not plain integers (orbax temp dirs, `<step>.corrupt`
  quarantined by the Checkpointer) are not steps.
  """
  root = checkpoint_dir(workdir)
  if not files.isdir(root):
    return []
  return sorted(int(name) for name in files.listdir(root)
                if name.isdigit() and files.isdir(files.join(root, name)))


def find_tokenizer(directory) -> str | None:
  """DIR/tokenizer.model (SentencePiece) or DIR/tokenizer.json (WordPiece), whichever
  is there; None if neither. Both there is an error: which one was used is unknown."""
  found = [path(directory, n) for n in TOKENIZER_FILES if files.exists(path(directory, n))]
  if len(found) > 1:
    raise ValueError(f"{directory} holds both {' and '.join(TOKENIZER_FILES)}: one run or "
                     "dataset has one tokenizer; remove the one it was not made with")
  return found[0] if found else None


def tokenizer_path(workdir) -> str:
  """WORKDIR's tokenizer file (`find_tokenizer`); FileNotFoundError naming it when absent."""
  found = find_tokenizer(workdir)
  if found is None:
    raise FileNotFoundError(
        f"No tokenizer at {path(workdir, TOKENIZER_FILE)} (or {TOKENIZER_JSON}): not a "
        f"pretraining workdir (the train main writes it next to {CONFIG_FILE}).")
  return found


def tokenizer_target(directory, tok) -> str:
  """Where `tok` is saved in `directory`: tokenizer.model or tokenizer.json by its kind."""
  return path(directory, tok.file_name)
