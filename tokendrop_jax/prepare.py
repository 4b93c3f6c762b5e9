"""Prepare a pretraining run's inputs once, before the launch: tokenizer + dataset.

  python -m tokendrop_jax.prepare --config=configs/bert_base.py --output=DIR \
      [--workers=N] [--config.data.train_files=... --config.data.valid_files=...]
      [--config.data.sources='WIKI_GLOB@0.75,BOOKS_GLOB@0.25' --config.data.valid_fraction=0.005]
  python -m tokendrop_jax.train --config=configs/bert_base.py --workdir=RUN \
      --config.data.dataset_dir=DIR

Why: a train main that builds its own inputs does it on process 0 while every
other host of a pod waits, and hosts with their own disks then have nothing to
read. Prepared once, on a path every host reads (or copied to each host), the
dataset lets every launch start at once, and tokenizing runs in a process
pool (`--workers`, one chunk of documents per task) with the same bytes out as
a serial build.

DIR is a `text_builder` dataset: ArrayRecord files, token_counts.npy,
tokenizer.model (or tokenizer.json) and corpus_meta.json, which also records what DIR was
prepared from. It is built in a staging directory beside DIR
(`.tmp-<name>-prepare-<host>-<pid>`) and renamed to DIR at the end, so DIR is
complete or absent. DIR may be a bucket (gs://...): the staging directory is
then in the local temp directory and is uploaded with corpus_meta.json last,
and readers take DIR as prepared only once that file is there. A rerun with the same sources and tokenizer does nothing;
with others it refuses, naming what differs, and changes nothing. The staging
directory of a killed run is removed by the next run on that host.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import sys
import tempfile
import time

from absl import app, flags, logging
from ml_collections import config_flags

from tokendrop_jax import files
from tokendrop_jax.training.input_settings import InputSettings

META_KEY = "prepared"  # the entry of corpus_meta.json this main adds
_STAGING = "-prepare-"


# ------------------------------------------------------------------ recipe ---
def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with files.open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _stamps(patterns, field: str) -> dict[str, list[int]]:
  """{absolute path: [size, mtime_ns]} of the files a config field names."""
  out = {}
  if not patterns:  # e.g. a mixture of TFDS datasets only
    return out
  for p in files.expand(patterns, field):
    out[files.resolve(p)] = files.size_and_mtime(p)
  return out


def recipe(settings: InputSettings) -> dict:
  """What the dataset is made from, by config field; cheap (no tokenizing).

  Files count as changed when their size or modification time changes.
  """
  from tokendrop_jax.training import inputs
  spec, corpus = settings.tokenizer, settings.corpus
  out = {"model.vocab_size": spec.vocab_size}
  if spec.tokenizer_model:
    if not files.isfile(spec.tokenizer_model):
      raise FileNotFoundError(f"data.tokenizer_model: no such file {spec.tokenizer_model}")
    if spec.tokenizer_model.endswith(".model"):
      sha = _sha256(spec.tokenizer_model)
    else:  # a vocab.txt / tokenizer.json: the tokenizer.json it becomes (with data.lowercase)
      sha = hashlib.sha256(inputs.given_tokenizer(spec).serialized()).hexdigest()
    out["tokenizer"] = f"data.tokenizer_model with sha256 {sha}"
  else:
    out["tokenizer"] = f"trained, data.tokenizer_type={spec.tokenizer_type!r}"
    if spec.tokenizer_type == "wordpiece":
      out["tokenizer"] += f", data.lowercase={spec.lowercase!r}"
  # Fields added since the first prepared datasets appear only when they matter, so
  # that those datasets still count as prepared from the same inputs.
  carve = corpus.valid_fraction > 0
  listed = []  # the files the dataset is made from
  if corpus.tfds_name:
    for k in ("tfds_name", "tfds_text_field", "tfds_train_split", "tfds_valid_split",
              "tfds_data_dir"):
      if not (carve and k == "tfds_valid_split"):
        out[f"data.{k}"] = getattr(corpus, k)
  elif corpus.demo_corpus:
    out["data.demo_corpus"] = True
  elif corpus.sources:
    from tokendrop_jax import config_fields
    mixture = config_fields.mixture_sources(corpus.sources)
    out["data.sources"] = ",".join(f"{pattern}@{weight:g}" for pattern, weight in mixture)
    out["files of data.sources"] = _stamps(
        [p for p, _ in mixture if not config_fields.tfds_member(p)], "data.sources")
    if any(config_fields.tfds_member(p) for p, _ in mixture):  # what its TFDS members read
      for k in ("tfds_text_field", "tfds_train_split", "tfds_data_dir"):
        out[f"data.{k}"] = getattr(corpus, k)
    if not carve:
      inputs.need_validation(corpus, "data.sources")
    listed += list(out["files of data.sources"])
  else:
    train, _ = inputs.text_files(corpus, corpus_dir="")
    out["data.train_files"] = _stamps(train, "data.train_files")
    listed += list(out["data.train_files"])
  if carve:
    out["data.valid_fraction"] = corpus.valid_fraction
  elif not corpus.tfds_name and not corpus.demo_corpus:
    out["data.valid_files"] = _stamps(corpus.valid_files.split(","), "data.valid_files")
    listed += list(out["data.valid_files"])
  from tokendrop_jax.data import text_readers
  if any(text_readers.file_format(p) != "text" for p in listed):
    out["data.text_field"] = corpus.text_field
  return out


def _show(value) -> str:
  if value is None:
    return "not set"
  if isinstance(value, dict):
    return ", ".join(value)
  if isinstance(value, str):
    return value or "''"
  return repr(value)


def differences(then: dict, now: dict) -> list[str]:
  """One line per field whose value differs, naming the field."""
  out = []
  for key in sorted(set(then) | set(now)):
    a, b = then.get(key), now.get(key)
    if a == b:
      continue
    if isinstance(a, dict) and isinstance(b, dict):
      parts = []
      for label, paths in (("new", [p for p in b if p not in a]),
                           ("gone", [p for p in a if p not in b]),
                           ("changed since", [p for p in b if p in a and a[p] != b[p]])):
        if paths:
          parts.append(f"{label}: {', '.join(paths)}")
      out.append(f"{key}: {'; '.join(parts)}")
    else:
      out.append(f"{key}: {_show(b)} now, {_show(a)} when it was prepared")
  return out


# ----------------------------------------------------------------- staging ---
def _say(line: str) -> None:
  print(line, flush=True)  # in order with the progress lines on stderr


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _staging_prefix(output: str) -> str:
  """Beside a local DIR (the final rename stays on one disk); for a bucket, in the
  local temp directory (it is uploaded from there)."""
  parent = tempfile.gettempdir() if files.is_remote(output) else os.path.dirname(output)
  return os.path.join(parent, f".tmp-{files.basename(output)}{_STAGING}")


def clean_leftovers(output: str, say=_say) -> None:
  """Removes the staging directories of killed runs of this host; names others."""
  prefix, host = _staging_prefix(output), socket.gethostname()
  parent = os.path.dirname(prefix)
  if not os.path.isdir(parent):
    return
  for name in sorted(os.listdir(parent)):
    path = os.path.join(parent, name)
    if not path.startswith(prefix):
      continue
    owner, _, pid = path[len(prefix):].rpartition("-")
    if owner == host and pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
      shutil.rmtree(path, ignore_errors=True)
      say(f"removed {path}, left by an interrupted run")
    else:
      say(f"ignoring {path}: a run on {owner or '?'} (process {pid}) may still be writing it")


# ------------------------------------------------------------------ output ---
class Progress:
  """Documents and tokens written so far, on stderr: one `\\r` line on a terminal,
  a line every 30 s in a log."""

  def __init__(self, stream=None):
    self._stream = stream or sys.stderr
    self._tty = self._stream.isatty()
    self._every = 0.5 if self._tty else 30.0
    self._split, self._line, self._last = None, "", 0.0
    self._t0 = self._prev = time.monotonic()  # split start, previous call

  def __call__(self, split: str, documents: int, tokens: int) -> None:
    now = time.monotonic()
    if split != self._split:
      self.done()
      self._split, self._t0 = split, self._prev
    self._prev = now
    rate = documents / max(now - self._t0, 1e-9)
    self._line = f"{split}: {documents:,} documents, {tokens:,} tokens ({rate:,.0f} documents/s)"
    if now - self._last >= self._every:
      self._last = now
      self._stream.write(("\r" if self._tty else "") + self._line + ("" if self._tty else "\n"))
      self._stream.flush()

  def done(self) -> None:
    """Ends the current split's line with its final counts."""
    if self._line:
      self._stream.write(("\r" if self._tty else "") + self._line + "\n")
      self._stream.flush()
    self._line = ""


def report(result: dict) -> list[str]:
  """What was built (or found), and the flag that points the train main at it."""
  lines = [f"{result['output']}: {result['status']}",
           f"  tokenizer   {result['tokenizer']} ({result['vocab_size']} pieces)"]
  for split, sizes in result["splits"].items():
    lines.append(f"  {split:<11} {sizes['documents']:>12,} documents {sizes['tokens']:>15,} tokens")
  for i, used in enumerate(result.get("mixture", [])):
    epochs = used.get("epochs")  # datasets from before up-sampling have `ran_out` instead
    what = (f"{epochs:.2f} epochs of it" if epochs is not None
            else "ran out" if used.get("ran_out") else "part of it")
    natural = (f", natural share {used['natural_share']:.1%}" if "natural_share" in used
               else "")
    lines.append(f"  source {i}    {used['documents']:>12,} documents, {used['share']:.1%} of the "
                 f"text (weight {used['weight']:g}{natural}), {what}: {used['files']}")
  lines.append(f"launch with: --config.data.dataset_dir={result['output']}")
  return lines


def _result(output: str, status: str) -> dict:
  from tokendrop_jax.data import text_builder
  from tokendrop_jax.training import workdir as workdir_lib
  meta = text_builder.load_corpus_meta(output)
  return {"output": output, "status": status, "splits": meta["splits"],
          "vocab_size": meta["vocab_size"], "mixture": mixture_used(meta["source"]),
          "tokenizer": workdir_lib.tokenizer_path(output)}


def mixture_used(source: dict) -> list[dict]:
  """How much of each source of a mixture went in (before a validation split is carved
  from it): documents, characters, share, natural share, epochs, weight, files; [] if no
  mixture."""
  if source.get("kind") == "carved":
    source = source["from"]
  if source.get("kind") != "mixture" or not source.get("used"):
    return []
  out = []
  for part, used in zip(source["parts"], source["used"]):
    if part.get("kind") == "tfds":
      shown = f"tfds:{part['name']} split {part['train_split']!r}"
    else:
      names = part["train"]
      shown = names[0] + (f" and {len(names) - 1} more file(s)" if len(names) > 1 else "")
    out.append({**used, "weight": part["weight"], "files": shown})
  return out


# ----------------------------------------------------------------- prepare ---
def _check_existing(output: str, now: dict) -> dict | None:
  """The result if `output` is already prepared from `now`; refuses other inputs."""
  from tokendrop_jax.data import text_builder
  from tokendrop_jax.training import inputs
  if not inputs.is_prepared(output):
    if files.isdir(output) and not files.listdir(output):
      files.rmtree(output)  # an empty directory holds nothing to keep
    elif files.exists(output):
      raise ValueError(f"--output={output} exists and is not a prepared dataset (no "
                       f"{text_builder.META_FILE}); choose another --output or remove it")
    return None
  then = text_builder.load_corpus_meta(output).get(META_KEY, {}).get("recipe")
  if then is None:
    raise ValueError(f"--output={output} is a dataset that tokendrop_jax.prepare did not make "
                     "(its corpus_meta.json does not say what it was made from); pass it as "
                     "--config.data.dataset_dir as it is, or choose another --output")
  from tokendrop_jax.training import workdir as workdir_lib
  tok_sha = _sha256(workdir_lib.tokenizer_path(output))
  if now["tokenizer"] == f"data.tokenizer_model with sha256 {tok_sha}":
    now = {**now, "tokenizer": then["tokenizer"]}  # the very tokenizer DIR was built with
  diffs = differences(then, now)
  if diffs:
    raise ValueError(f"--output={output} was prepared from other inputs; nothing was changed. "
                     "What differs:\n  " + "\n  ".join(diffs) +
                     "\nChoose another --output, or remove it to prepare it again.")
  return _result(output, "already prepared from the same sources and tokenizer: nothing to do")


def _build(settings: InputSettings, output: str, staging: str, workers: int, now: dict,
           say) -> dict:
  from tokendrop_jax.data import text_builder
  from tokendrop_jax.training import inputs
  spec, t0 = settings.tokenizer, time.monotonic()
  corpus_dir = os.path.join(staging, "corpus")
  # Checks the inputs before any long work.
  source = inputs.corpus_source(settings.corpus, corpus_dir)
  how = "copying" if spec.tokenizer_model else "training"
  say(f"{how} the {spec.vocab_size}-piece tokenizer ...")
  tok = inputs.ensure_tokenizer(spec, staging, source, corpus_dir)
  t_tok = time.monotonic() - t0
  say(f"tokenizing with {workers} worker(s) ...")
  progress = Progress()
  meta = {META_KEY: {"recipe": now, "host": socket.gethostname(), "workers": workers},
          "tokenizer": files.join(output, tok.file_name)}  # not the staging one
  built = inputs.build_dataset(source, tok, staging, name=files.basename(output),
                               workers=workers, progress=progress, extra_meta=meta)
  progress.done()
  if files.is_remote(output):
    say(f"uploading to {output} ...")
  try:
    files.publish_dir(built, output, last=text_builder.META_FILE)  # the commit point
  except OSError:
    if not inputs.is_prepared(output):
      raise
    return _check_existing(output, now)  # a concurrent run finished first: same inputs, or refuse
  total = time.monotonic() - t0
  return _result(output, f"prepared in {total:.1f} s (tokenizer {t_tok:.1f} s, dataset "
                         f"{total - t_tok:.1f} s, {workers} worker(s))")


def prepare(config, output: str, workers: int | None = None, say=_say) -> dict:
  """Prepares `output` from `config.data` (once) -> what is there: output,
  tokenizer, vocab_size, splits {split: {documents, tokens}}, status."""
  from tokendrop_jax import config_checks, config_lib
  if config_lib.is_glue(config):
    raise ValueError("tokendrop_jax.prepare is for pretraining configs; fine-tuning reads "
                     "its TSV or TFDS files directly")
  config_checks.validate(config)
  if not output:
    raise ValueError("--output: required")
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  output, workers = files.resolve(output), max(1, workers or os.cpu_count() or 1)
  settings = InputSettings.of(config)  # all that preparing reads of the config
  now = recipe(settings)
  found = _check_existing(output, now)
  if found:
    return found
  files.check_writable(output, "--output")  # before hours of tokenizing
  clean_leftovers(output, say)
  staging = _staging_prefix(output) + f"{socket.gethostname()}-{os.getpid()}"
  os.makedirs(staging, exist_ok=True)
  try:
    return _build(settings, output, staging, workers, now, say)
  finally:
    shutil.rmtree(staging, ignore_errors=True)


def define_flags() -> None:
  """The main's flags, defined only when it runs (importing this module defines none,
  so it can share a process with the train main)."""
  config_flags.DEFINE_config_file("config", None, "configs/x.py[:variant]")
  flags.DEFINE_string("output", None, "The directory to prepare (created; must not be "
                      "another dataset).")
  flags.DEFINE_integer("workers", os.cpu_count() or 1,
                       "Processes that tokenize (1: no pool). The output does not depend on it.")
  flags.mark_flags_as_required(["config", "output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from tokendrop_jax import cli
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  result = cli.run_or_exit(lambda: prepare(f.config, f.output, f.workers))
  print("\n".join(report(result)))


if __name__ == "__main__":
  define_flags()
  app.run(main)
