"""Import a Hugging Face BERT into a workdir that `train` continues.

  python -m tokendrop_jax.import_hf --hf_dir=DIR --workdir=W \
      [--config=configs/x.py:variant] [--config.data.train_files=... ...]

DIR holds `config.json`, `model.safetensors` (or a sharded
`model.safetensors.index.json`) and the tokenizer (`tokenizer.json`, or
`vocab.txt` + `tokenizer_config.json`) of a `BertForMaskedLM`,
`BertForPreTraining` or `BertModel`. W then holds what a pretraining run
holds after step 0:

  W/config.json      the --config, its model.* sizes taken from DIR/config.json
  W/tokenizer.json   the model's WordPiece tokenizer
  W/checkpoints/0/   the train state of the train main's own builder (`loop.build`):
                     a fresh optimizer, the strategy's initial token importance,
                     and the imported params

so `python -m tokendrop_jax.train --workdir=W` continues pretraining with token
dropping, resuming from step 0 as any run resumes; `finetune
--config.init_from=W` and `export --workdir=W` read it like any pretraining
run. Weights are read with our safetensors reader (no pickle); the name mapping
is `hf.params.param_table`, export's too, so import -> export gives back the same
tensors. The reading and mapping live in `tokendrop_jax.hf`; this main checks,
builds the step-0 state and writes the workdir.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Iterable

import numpy as np
from absl import app, flags

from tokendrop_jax import files
from tokendrop_jax.hf import bert_config, params as hf_params, tokenizer_files, weights


# ---------------------------------------------------------------------------
# The workdir.


def _check_empty(workdir: str) -> bool:
  """Refuses a workdir with anything in it -> whether it exists (empty)."""
  if files.is_remote(workdir):
    if files.isfile(workdir):
      raise FileExistsError(f"--workdir {workdir} is a file")
    if files.listdir(workdir):
      raise FileExistsError(f"--workdir {workdir} is not empty: import into a new workdir "
                            "(nothing was changed)")
    return False
  if os.path.lexists(workdir):
    if not os.path.isdir(workdir):
      raise FileExistsError(f"--workdir {workdir} exists and is not a directory")
    if os.listdir(workdir):
      raise FileExistsError(f"--workdir {workdir} is not empty: import into a new workdir "
                            "(nothing was changed)")
    return True
  return False


def initial_state(config, tok, imported: dict, has_head: bool, workdir: str):
  """The train main's step-0 state for `config` with `imported` params in it."""
  import jax  # pylint: disable=g-import-not-at-top
  from tokendrop_jax import config_lib, importance  # pylint: disable=g-import-not-at-top
  from tokendrop_jax.data import text_builder  # pylint: disable=g-import-not-at-top
  from tokendrop_jax.model.encoder import to_scanned  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from tokendrop_jax.training import input_settings, inputs, loop
  counts = None
  if importance.get(config.token_drop.strategy).needs_counts:
    # Token frequencies of the user's corpus: built now, as train would (and reused by it).
    dataset_dir, _ = inputs.prepare(input_settings.InputSettings.of(config), workdir)
    counts = text_builder.load_token_counts(dataset_dir)
  # One device: the state's values do not depend on the mesh, and a checkpoint
  # restores onto any mesh; config.json keeps the configured one.
  one = config.copy_and_resolve_references()
  one.mesh.update(data=1, fsdp=1, tensor=1)
  run = loop.build(one, tok.special_ids, counts, devices=jax.devices()[:1])
  state = run.init_state()
  cfg = config_lib.model_config(config)
  bert = to_scanned(imported["bert"], cfg) if cfg.scan_layers else imported["bert"]
  fresh = jax.device_get(state.params)
  params = {**fresh, "bert": bert, **({"mlm": imported["mlm"]} if has_head else {})}
  if jax.tree.structure(params) != jax.tree.structure(fresh):
    raise ValueError("the imported params do not have our model's structure: "
                     f"{jax.tree.structure(params)} vs {jax.tree.structure(fresh)}")
  abstract = run.layout.abstract.params
  params = jax.tree.map(lambda x, a: jax.device_put(np.asarray(x, a.dtype), a.sharding),
                        params, abstract)
  # optax's init depends on the params' shapes only: the optimizer state stays fresh.
  return state.replace(params=params)


def import_hf(hf_dir: str, workdir: str, config, explicit: Iterable[str] = ()) -> str:
  """Writes the workdir of the HF model in `hf_dir` (see the module doc) -> its path.

  `config`: the pretraining config to continue with (its model sizes are
  replaced by the HF config's; `explicit`: model fields the user set, which
  must agree). Everything is checked before anything is written; on failure
  nothing is left behind.
  """
  from tokendrop_jax import config_checks, config_lib  # pylint: disable=g-import-not-at-top
  from tokendrop_jax.training import checkpoint  # pylint: disable=g-import-not-at-top
  from tokendrop_jax.training import workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  hf_dir, workdir = files.resolve(hf_dir), files.resolve(workdir)
  existed = _check_empty(workdir)
  files.check_writable(workdir, "--workdir")
  hf = bert_config.read_hf_config(hf_dir)
  config_json = files.join(hf_dir, bert_config.HF_CONFIG)
  config = bert_config.apply_model(config, hf, explicit, config_json)
  if "tokenizer_type" in config.data:  # says what W's tokenizer is; it is never retrained
    config.data.tokenizer_type = "wordpiece"
  config_checks.validate(config)
  cfg = config_lib.model_config(config)
  paths = weights.weight_files(hf_dir)
  where = paths[0] if len(paths) == 1 else files.join(hf_dir, weights.WEIGHTS_INDEX)
  imported, has_head = hf_params.params_from_hf(weights.read_tensors(paths), cfg, where)
  tok = tokenizer_files.read_tokenizer(hf_dir)
  if tok.vocab_size != cfg.vocab_size:
    raise ValueError(f"{tok.model_path} has {tok.vocab_size} pieces but "
                     f"{config_json} has vocab_size={cfg.vocab_size}")
  if not has_head:
    logging.warning("%s has no MLM head (a BertModel): the head is initialised as BERT's "
                    "(transform fresh, decoder tied to the word embeddings, bias zero)", where)
  arch = ",".join(hf.get("architectures") or ["?"])
  try:
    files.makedirs(workdir)
    tok.save(workdir_lib.tokenizer_target(workdir, tok))
    state = initial_state(config, tok, imported, has_head, workdir)
    ckpt = checkpoint.Checkpointer(workdir_lib.checkpoint_dir(workdir), save_every=1,
                                   keep=config.train.keep_checkpoints, async_save=False)
    with checkpoint.closing(ckpt):
      ckpt.save(0, state, force=True, host_state={"skipped_steps": 0, "train_time_s": 0.0})
    workdir_lib.write_config(config, workdir)  # last: a workdir without it is no run
  except BaseException:
    _remove(workdir, keep_dir=existed)  # it was empty or absent: all of it is ours
    raise
  print(f"imported {arch} from {hf_dir}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_heads} heads, vocab {cfg.vocab_size}, {cfg.hidden_act}; MLM head "
        f"{'imported' if has_head else 'initialised fresh'}", flush=True)
  return workdir


def _remove(workdir: str, keep_dir: bool) -> None:
  """Removes what a failed import wrote: the workdir, or its contents if it existed."""
  if not keep_dir:
    files.rmtree(workdir)
    return
  for name in files.listdir(workdir):
    files.rmtree(files.join(workdir, name))


# ---------------------------------------------------------------------------
# Main.


def explicit_model_fields(argv: Iterable[str]) -> set[str]:
  """model.* fields set on the command line (`--config.model.hidden_size=...`)."""
  out = set()
  for arg in argv:
    for prefix in ("--config.model.", "-config.model."):
      if arg.startswith(prefix):
        out.add(arg[len(prefix):].split("=", 1)[0])
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from tokendrop_jax import cli, config_lib  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  config = f.config if f.config is not None else config_lib.base_config()
  try:
    workdir = cli.run_or_exit(lambda: import_hf(f.hf_dir, f.workdir, config,
                                                explicit_model_fields(sys.argv)))
  except FileExistsError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(cli.EXIT_BAD_INPUT)
  print(f"wrote {workdir}: config.json, the tokenizer, checkpoints/0; continue pretraining "
        f"with: python -m tokendrop_jax.train --workdir={workdir}", flush=True)


if __name__ == "__main__":
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config_flags.DEFINE_config_file("config", None, "Pretraining config to continue with: "
                                  "configs/x.py[:variant] (default: config_lib.base_config())")
  flags.DEFINE_string("hf_dir", None, "Hugging Face model folder (local or gs://).",
                      required=True)
  flags.DEFINE_string("workdir", None, "New workdir to write (must not exist or be empty).",
                      required=True)
  app.run(main)
