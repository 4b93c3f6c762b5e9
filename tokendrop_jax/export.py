"""Export a pretraining checkpoint to the Hugging Face BERT format.

  python -m tokendrop_jax.export --workdir=PRETRAIN_WORKDIR --output=DIR [--step=N] [--overwrite]

DIR then loads with `transformers.AutoModelForMaskedLM.from_pretrained(DIR)`
(PyTorch) and `AutoTokenizer.from_pretrained(DIR)`. Writing it needs neither
transformers nor torch: `config.json`, `model.safetensors` (numpy) and the
tokenizer as a `tokenizers` JSON built from the SentencePiece proto, or for a
WordPiece run BERT's own files (tokenizer.json, vocab.txt, do_lower_case).

The conversions are pure and live in `tokendrop_jax.hf` (shared with
`import_hf`); this main writes the folder into a temp dir and publishes it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile

from absl import app, flags, logging

from tokendrop_jax import files
from tokendrop_jax.hf import bert_config, params as hf_params, tokenizer_files, weights

EXPORT_META_FILE = "tokendrop_export.json"  # written last: the folder is complete


def _umask() -> int:
  """The process umask: reading it means setting it, so it is set back at once."""
  umask = os.umask(0)
  os.umask(umask)
  return umask


def _write_json(path: str, obj) -> None:
  with files.open(path, "w") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
    f.write("\n")


def _write_folder(d: str, params, cfg, tok, meta: dict) -> None:
  """The HF files into the local folder `d` (read as the umask allows, not 0600)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  weights_file = os.path.join(d, weights.WEIGHTS)
  save_file(hf_params.hf_state_dict(params, cfg), weights_file, metadata={"format": "pt"})
  os.chmod(weights_file, 0o666 & ~_umask())  # safetensors creates it 0600
  _write_json(os.path.join(d, bert_config.HF_CONFIG), bert_config.hf_config(cfg, tok.pad_id))
  for name, obj in tokenizer_files.tokenizer_files(tok, cfg.max_position).items():
    if isinstance(obj, str):  # vocab.txt
      with files.open(os.path.join(d, name), "w") as f:
        f.write(obj)
    else:
      _write_json(os.path.join(d, name), obj)
  _write_json(os.path.join(d, EXPORT_META_FILE), meta)


def _check_output(output: str, overwrite: bool) -> None:
  if files.is_remote(output):
    if files.isfile(output):
      raise FileExistsError(f"--output {output} exists and is not a folder; choose another path.")
    if files.listdir(output) and not overwrite:
      raise FileExistsError(f"--output {output} already exists and is not empty; "
                            "pass --overwrite to replace it.")
    return
  if os.path.lexists(output):
    if not os.path.isdir(output) or os.path.islink(output):
      raise FileExistsError(f"--output {output} exists and is not a directory; "
                            "choose another path.")
    if os.listdir(output) and not overwrite:
      raise FileExistsError(f"--output {output} already exists and is not empty; "
                            "pass --overwrite to replace it.")


def _publish(built: str, output: str) -> None:
  """The finished local folder `built` becomes `output`, replacing what is there.

  `files.publish_dir` does the commit (a local rename; a bucket: upload,
  tokendrop_export.json last). Unlike its other callers, which publish to a
  path that holds no folder, an export may replace one (--overwrite), which
  publish_dir does not do: locally the old folder is first moved aside (so the
  rename can succeed) and put back if the rename fails, then removed; in a
  bucket, the files the new folder lacks are removed after the upload.
  """
  if files.is_remote(output):
    stale = set(files.listdir(output)) - set(os.listdir(built))
    files.publish_dir(built, output, last=EXPORT_META_FILE)
    for name in stale:
      files.rmtree(files.join(output, name))
    return
  os.chmod(built, 0o777 & ~_umask())  # mkdtemp makes it 0700
  parent, old = os.path.dirname(output), None
  if os.path.lexists(output):
    old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(output)}.old-")
    os.rename(output, os.path.join(old, "x"))
  try:
    files.publish_dir(built, output, last=EXPORT_META_FILE)
  except BaseException:
    if old:  # Put the old folder back.
      os.rename(os.path.join(old, "x"), output)
      os.rmdir(old)
    raise
  if old:
    shutil.rmtree(old, ignore_errors=True)


def export(workdir: str, output: str, step: int | None = None,
           overwrite: bool = False) -> str:
  """Writes the HF folder for `workdir`'s checkpoint (latest or `step`) -> output.

  The folder is written beside `output` and renamed into place, so a failed
  export never leaves a half-written folder (nor loses an old one). A bucket
  `output` (gs://...) is written locally and uploaded, tokendrop_export.json
  last; with --overwrite, files of the old folder that the new one lacks are
  removed after the upload.
  """
  # Imported here so that `--help` needs no orbax.
  from tokendrop_jax import config_lib  # pylint: disable=g-import-not-at-top
  from tokendrop_jax.data.tokenizer import load_tokenizer  # pylint: disable=g-import-not-at-top
  from tokendrop_jax.training import pretrained  # pylint: disable=g-import-not-at-top
  from tokendrop_jax.training import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  output = files.resolve(output)
  _check_output(output, overwrite)  # Fail before the (slow) restore.
  files.check_writable(output, "--output")
  workdir_lib.read_config(workdir)  # Names a missing workdir or config first.
  tok = load_tokenizer(workdir_lib.tokenizer_path(workdir))
  params, config, step = pretrained.load_pretrained(workdir, step)
  cfg = config_lib.model_config(config)
  if tok.vocab_size > cfg.vocab_size:
    raise ValueError(f"{tok.model_path} has {tok.vocab_size} pieces but model.vocab_size "
                     f"in {workdir_lib.path(workdir, workdir_lib.CONFIG_FILE)} is "
                     f"{cfg.vocab_size}")
  meta = {"workdir": workdir_lib.resolve(workdir), "step": step,
          "config_name": config.get("name", ""),
          "token_drop_strategy": config.get("token_drop", {}).get("strategy", "")}
  if files.is_remote(output):  # built in local temp space, then uploaded
    tmp = tempfile.mkdtemp(prefix="tokendrop-export-")
  else:  # built beside `output`: the rename stays on one file system
    parent = os.path.dirname(output)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(output)}.tmp-")
  try:
    _write_folder(tmp, params, cfg, tok, meta)
    _check_output(output, overwrite)  # Still true after the restore?
    _publish(tmp, output)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)  # gone after a local publish; the upload's source
  logging.info("Exported step %d of %s to %s.", step, workdir, output)
  return output


def _define_flags() -> None:
  """Defined only when run as a main, so importing this module (tests, other
  mains with their own --workdir/--output) cannot clash on flag names."""
  flags.DEFINE_string("workdir", None, "Pretraining workdir (config.json, tokenizer.model, "
                      "checkpoints/).", required=True)
  flags.DEFINE_string("output", None, "Folder to write the Hugging Face model to.",
                      required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step to export; default the latest.")
  flags.DEFINE_bool("overwrite", False, "Replace --output if it exists.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  print(export(f.workdir, f.output, f.step, f.overwrite))


if __name__ == "__main__":
  _define_flags()
  app.run(main)
