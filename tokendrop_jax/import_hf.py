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
run. Weights are read with safetensors (no pickle); the name mapping is
`export.param_table`, so import -> export gives back the same tensors.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Iterable, Mapping

import numpy as np
from absl import app, flags

from tokendrop_jax import export, files

HF_CONFIG = "config.json"
WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json", "tf_model.h5",
           "flax_model.msgpack")
ARCHITECTURES = ("BertForMaskedLM", "BertForPreTraining", "BertModel")

# Hugging Face's hidden_act -> model.hidden_act (the same function).
HIDDEN_ACT = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}

# model.* field <- the HF config key it comes from. The rest of model.* (dropout,
# dtype, remat, attention kernel, scan_layers) is how to train, from --config.
HF_FIELDS = {
    "vocab_size": "vocab_size", "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers", "num_heads": "num_attention_heads",
    "intermediate_size": "intermediate_size", "max_position": "max_position_embeddings",
    "type_vocab_size": "type_vocab_size", "layer_norm_eps": "layer_norm_eps",
    "hidden_act": "hidden_act", "initializer_range": "initializer_range",
}

# HF config values we cannot run: key -> (the value we need, its default when absent).
_REQUIRED = {"position_embedding_type": ("absolute", "absolute"), "is_decoder": (False, False),
             "add_cross_attention": (False, False)}

# Tensors a checkpoint may have that our model has no use for (pooler, NSP head,
# buffers); the tied decoder is checked against what it is tied to.
_UNUSED = ("bert.pooler.dense.weight", "bert.pooler.dense.bias", "cls.seq_relationship.weight",
           "cls.seq_relationship.bias", "bert.embeddings.position_ids")
_DECODER = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
            "cls.predictions.decoder.bias": "cls.predictions.bias"}

CONVERT_HINT = (
    "Convert it to safetensors once (transformers and torch needed only for this):\n"
    "  from transformers import AutoModelForMaskedLM\n"
    "  model = AutoModelForMaskedLM.from_pretrained('{d}')\n"
    "  model.save_pretrained('{d}', safe_serialization=True)\n"
    "(use AutoModel for a checkpoint without an MLM head)")


# ---------------------------------------------------------------------------
# Config.


def read_hf_config(hf_dir: str) -> dict[str, Any]:
  """DIR/config.json, checked to be a BERT we can run; errors name the file and key."""
  source = files.join(hf_dir, HF_CONFIG)
  if not files.isfile(source):
    raise FileNotFoundError(f"No {HF_CONFIG} in --hf_dir={hf_dir}: not a Hugging Face model "
                            "folder (e.g. `huggingface-cli download bert-base-uncased "
                            "--local-dir DIR`)")
  try:
    hf = json.loads(files.read_bytes(source).decode("utf-8"))
  except ValueError as e:
    raise ValueError(f"{source}: not valid JSON: {e}") from None
  if not isinstance(hf, dict):
    raise ValueError(f"{source}: not a Hugging Face config (a JSON object)")
  if hf.get("model_type") != "bert":
    raise ValueError(f"{source}: model_type={hf.get('model_type')!r}; only BERT "
                     f"(model_type 'bert': {', '.join(ARCHITECTURES)}) can be imported")
  archs = hf.get("architectures") or []
  other = [a for a in archs if a not in ARCHITECTURES]
  if other:
    raise ValueError(f"{source}: architectures={archs}; {other[0]} is not importable "
                     f"(only {', '.join(ARCHITECTURES)})")
  for key, (need, default) in _REQUIRED.items():
    if hf.get(key, default) != need:
      raise ValueError(f"{source}: {key}={hf.get(key)!r} is not supported (our BERT has "
                       f"{key}={need!r})")
  missing = [k for k in HF_FIELDS.values() if k not in hf]
  if missing:
    raise ValueError(f"{source}: no {missing[0]} (a BERT config has {', '.join(HF_FIELDS.values())})")
  if hf["hidden_act"] not in HIDDEN_ACT:
    raise ValueError(f"{source}: hidden_act={hf['hidden_act']!r} is not supported (only "
                     f"{', '.join(HIDDEN_ACT)})")
  return hf


def model_fields(hf: Mapping[str, Any]) -> dict[str, Any]:
  """model.* values of the HF config."""
  out = {field: hf[key] for field, key in HF_FIELDS.items()}
  out["hidden_act"] = HIDDEN_ACT[hf["hidden_act"]]
  return out


def apply_model(config, hf: Mapping[str, Any], explicit: Iterable[str] = (),
                where: str = HF_CONFIG):
  """`config` with model.* from the HF config. A field set on the command line
  (`explicit`) to another value is refused, naming it; one that the config
  file set otherwise is replaced, and logged."""
  explicit = set(explicit)
  for field, value in model_fields(hf).items():
    key = HF_FIELDS[field]
    ours = config.model[field]
    if ours != value:
      if field in explicit:
        raise ValueError(f"--config.model.{field}={ours!r} but {where} has {key}={hf[key]!r}: "
                         "the model's sizes come from the Hugging Face config; drop the flag")
      logging.info("model.%s: %r from the config replaced by %r (%s: %s)", field, ours, value,
                   where, key)
    config.model[field] = value
  return config


# ---------------------------------------------------------------------------
# Weights.


def weight_files(hf_dir: str) -> list[str]:
  """The safetensors file(s) of DIR; refuses pickled checkpoints with how to convert them."""
  index = files.join(hf_dir, WEIGHTS_INDEX)
  if files.isfile(index):
    try:
      weight_map = json.loads(files.read_bytes(index).decode("utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"{index}: not a safetensors index (no weight_map): {e}") from None
    return [files.join(hf_dir, name) for name in sorted(set(weight_map.values()))]
  single = files.join(hf_dir, WEIGHTS)
  if files.isfile(single):
    return [single]
  pickled = [n for n in PICKLED if files.exists(files.join(hf_dir, n))]
  if pickled:
    raise ValueError(f"--hf_dir={hf_dir} has {pickled[0]} but no {WEIGHTS}: pickled "
                     "checkpoints are never loaded (unpickling runs code). "
                     + CONVERT_HINT.format(d=hf_dir))
  raise FileNotFoundError(f"--hf_dir={hf_dir} has neither {WEIGHTS} nor {WEIGHTS_INDEX}")


def _canonical(name: str) -> str:
  """HF's name of a tensor as `BertForMaskedLM` has it: a `BertModel` saves its
  tensors without the `bert.` prefix; old checkpoints name LayerNorm's gamma/beta."""
  if name.endswith("LayerNorm.gamma"):
    name = name[:-len("gamma")] + "weight"
  elif name.endswith("LayerNorm.beta"):
    name = name[:-len("beta")] + "bias"
  return name if name.startswith(("bert.", "cls.")) else "bert." + name


# safetensors dtype names -> numpy (bfloat16 through ml_dtypes, which jax brings).
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
                       "U8": "uint8", "BOOL": "bool"}


def _load_safetensors(data: bytes) -> dict[str, np.ndarray]:
  """{name: array} of one safetensors file: an 8-byte header length, a JSON header of
  {name: {dtype, shape, data_offsets}}, then the bytes. bfloat16 tensors (the usual
  dtype of recent checkpoints) are read too, which safetensors' numpy loader refuses."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  n = int.from_bytes(data[:8], "little")
  header = json.loads(data[8:8 + n])
  body = memoryview(data)[8 + n:]
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    kind = _SAFETENSORS_DTYPES.get(info["dtype"])
    if kind is None:
      raise ValueError(f"tensor {name} has dtype {info['dtype']}, which this reader lacks")
    dtype = ml_dtypes.bfloat16 if kind == "bfloat16" else np.dtype(kind)
    start, end = info["data_offsets"]
    out[name] = np.frombuffer(body[start:end], dtype=dtype).reshape(info["shape"])
  return out


def read_tensors(paths: Iterable[str]) -> dict[str, np.ndarray]:
  """{canonical name: array} of safetensors files (numpy; bf16/f16/f32/f64 -> float32)."""
  out = {}
  for path in paths:
    if not files.isfile(path):
      raise FileNotFoundError(f"{path}: listed in {WEIGHTS_INDEX} but missing")
    try:
      tensors = _load_safetensors(files.read_bytes(path))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{path}: not a readable safetensors file: {e}") from None
    for name, x in tensors.items():
      if name.endswith("position_ids"):  # an int buffer some checkpoints carry (ignored)
        out[_canonical(name)] = x
        continue
      if not (np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16"):
        raise ValueError(f"{path}: tensor {name} has dtype {x.dtype}, expected floats")
      out[_canonical(name)] = x.astype(np.float32)
  return out


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def params_from_hf(tensors: Mapping[str, np.ndarray], cfg, where: str) -> tuple[dict, bool]:
  """(our param tree in the unrolled layout, float32; whether it has the MLM head).

  The inverse of `export.hf_state_dict`, through the same `export.param_table`.
  Without `cls.predictions.*` (a `BertModel`) the tree has only 'bert'.
  """
  table = export.param_table(cfg)
  known = {t.hf for t in table}
  has_head = any(t.hf in tensors for t in table if t.path[0] == "mlm")
  unknown = sorted(set(tensors) - known - set(_UNUSED) - set(_DECODER))
  if unknown:
    raise ValueError(f"{where}: tensors {unknown[:5]} are not in a BERT of {HF_CONFIG}'s "
                     "sizes (another architecture?)")
  for decoder, tied in _DECODER.items():
    if decoder in tensors and tied in tensors and not np.array_equal(tensors[decoder],
                                                                     tensors[tied]):
      raise ValueError(f"{where}: {decoder} differs from {tied}; our MLM decoder is tied to "
                       f"it (tie_word_embeddings), an untied head cannot be imported")
  params: dict = {}
  for t in table:
    if t.hf not in tensors:
      if t.path[0] == "mlm" and not has_head:
        continue
      raise ValueError(f"{where}: no tensor {t.hf}")
    x = tensors[t.hf]
    if tuple(x.shape) != t.hf_shape:
      if t.hf == "bert.embeddings.word_embeddings.weight" and x.shape[1:] == t.hf_shape[1:]:
        raise ValueError(f"{where}: {t.hf} has {x.shape[0]} rows but {HF_CONFIG} has "
                         f"vocab_size={cfg.vocab_size}")
      raise ValueError(f"{where}: {t.hf} has shape {tuple(x.shape)}, but {HF_CONFIG}'s sizes "
                       f"give {t.hf_shape}")
    _set(params, t.path, np.ascontiguousarray(t.from_hf(np.asarray(x, np.float32))))
  return params, has_head


# ---------------------------------------------------------------------------
# Tokenizer.


def read_tokenizer(hf_dir: str):
  """DIR's WordPiece tokenizer: tokenizer.json, else vocab.txt with
  tokenizer_config.json's do_lower_case (inferred from the vocabulary without it)."""
  from tokendrop_jax.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  tok_json = files.join(hf_dir, "tokenizer.json")
  if files.isfile(tok_json):
    return tokenizer_lib.WordPieceTokenizer.from_json(tok_json)
  vocab = files.join(hf_dir, "vocab.txt")
  if not files.isfile(vocab):
    raise FileNotFoundError(f"--hf_dir={hf_dir} has no tokenizer: neither tokenizer.json "
                            "nor vocab.txt")
  lowercase = None
  tok_config = files.join(hf_dir, "tokenizer_config.json")
  if files.isfile(tok_config):
    try:
      lowercase = json.loads(files.read_bytes(tok_config).decode("utf-8")).get("do_lower_case")
    except (ValueError, AttributeError) as e:
      raise ValueError(f"{tok_config}: not a tokenizer config: {e}") from None
  return tokenizer_lib.WordPieceTokenizer.from_vocab(vocab, lowercase)


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
  from tokendrop_jax.training import inputs, loop  # pylint: disable=g-import-not-at-top
  counts = None
  if importance.get(config.token_drop.strategy).needs_counts:
    # Token frequencies of the user's corpus: built now, as train would (and reused by it).
    dataset_dir, _ = inputs.prepare(config, workdir)
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
  hf = read_hf_config(hf_dir)
  config = apply_model(config, hf, explicit, files.join(hf_dir, HF_CONFIG))
  if "tokenizer_type" in config.data:  # says what W's tokenizer is; it is never retrained
    config.data.tokenizer_type = "wordpiece"
  config_checks.validate(config)
  cfg = config_lib.model_config(config)
  paths = weight_files(hf_dir)
  where = paths[0] if len(paths) == 1 else files.join(hf_dir, WEIGHTS_INDEX)
  imported, has_head = params_from_hf(read_tensors(paths), cfg, where)
  tok = read_tokenizer(hf_dir)
  if tok.vocab_size != cfg.vocab_size:
    raise ValueError(f"{tok.model_path} has {tok.vocab_size} pieces but "
                     f"{files.join(hf_dir, HF_CONFIG)} has vocab_size={cfg.vocab_size}")
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
  from etils import epath  # pylint: disable=g-import-not-at-top
  if not keep_dir:
    if files.exists(workdir):
      files.rmtree(workdir)
    return
  for name in files.listdir(workdir):
    child = files.join(workdir, name)
    if files.isdir(child):
      files.rmtree(child)
    else:
      epath.Path(child).unlink()


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
