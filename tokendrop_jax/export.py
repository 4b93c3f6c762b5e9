"""Export a pretraining checkpoint to the Hugging Face BERT format.

  python -m tokendrop_jax.export --workdir=PRETRAIN_WORKDIR --output=DIR [--step=N] [--overwrite]

DIR then loads with `transformers.AutoModelForMaskedLM.from_pretrained(DIR)`
(PyTorch) and `AutoTokenizer.from_pretrained(DIR)`. Writing it needs neither
transformers nor torch: `config.json`, `model.safetensors` (numpy) and the
tokenizer as a `tokenizers` JSON built from the SentencePiece proto, or for a
WordPiece run BERT's own files (tokenizer.json, vocab.txt, do_lower_case).

The conversion functions are pure (params/proto in, dicts out); files are
written only by `export`, into a temp dir that is renamed into place.
"""
from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import tempfile
from typing import Any, Mapping

import numpy as np
from absl import app, flags, logging

from tokendrop_jax import files
from tokendrop_jax.model.config import BertConfig

EXPORT_META_FILE = "tokendrop_export.json"  # written last: the folder is complete
SPACE = "\u2581"  # SentencePiece's escaped whitespace

# model.hidden_act -> Hugging Face's name of the same function.
HF_HIDDEN_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu"}


# ---------------------------------------------------------------------------
# Model: config and weights.


def hf_config(cfg: BertConfig, pad_token_id: int = 0) -> dict[str, Any]:
  """The Hugging Face `BertConfig` of our model (post-LN BERT, `model.hidden_act`);
  `pad_token_id`: the tokenizer's [PAD] (0 in ours, also in BERT's vocab.txt)."""
  return {
      "architectures": ["BertForMaskedLM"],
      "model_type": "bert",
      "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_layers,
      "num_attention_heads": cfg.num_heads,
      "intermediate_size": cfg.intermediate_size,
      "hidden_act": HF_HIDDEN_ACT[cfg.hidden_act],  # FFN and MLM-head transform, as ours
      "hidden_dropout_prob": cfg.dropout_rate,
      "attention_probs_dropout_prob": cfg.attention_dropout_rate,
      "max_position_embeddings": cfg.max_position,
      "type_vocab_size": cfg.type_vocab_size,
      "initializer_range": cfg.initializer_range,
      "layer_norm_eps": cfg.layer_norm_eps,
      "pad_token_id": int(pad_token_id),
      "position_embedding_type": "absolute",
      "tie_word_embeddings": True,  # our MLM decoder is the word embedding matrix
      "torch_dtype": "float32",
  }


def _get(tree: Mapping[str, Any], *path: str, shape: tuple[int, ...]) -> np.ndarray:
  """tree[path[0]][path[1]]... as float32, checked against the config's shape."""
  node = tree
  for i, key in enumerate(path):
    if not isinstance(node, Mapping) or key not in node:
      raise KeyError(f"params has no {'/'.join(path[:i + 1])} (expected a "
                     "BertForPretraining param tree)")
    node = node[key]
  if tuple(np.shape(node)) != tuple(shape):
    raise ValueError(f"params {'/'.join(path)} has shape {tuple(np.shape(node))}, "
                     f"the config says {tuple(shape)}")
  return np.asarray(node, np.float32)


@dataclasses.dataclass(frozen=True)
class Tensor:
  """One tensor of Hugging Face's `BertForMaskedLM` and the param it is.

  torch Linear weights are [out, in], the transpose of Flax kernels (`linear`);
  the per-head projections [hidden, heads, head_dim] flatten to heads*head_dim,
  the order of HF's `transpose_for_scores`. Export and import (`import_hf`)
  both read this table, so the two directions cannot disagree.
  """
  hf: str                       # e.g. bert.encoder.layer.0.attention.self.query.weight
  path: tuple[str, ...]         # ours, in the unrolled param tree
  shape: tuple[int, ...]        # ours
  hf_shape: tuple[int, ...]
  linear: bool = False          # a torch Linear weight: [out, in]

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    return x.reshape(self.hf_shape[::-1]).T if self.linear else x.reshape(self.hf_shape)

  def from_hf(self, x: np.ndarray) -> np.ndarray:
    return x.T.reshape(self.shape) if self.linear else x.reshape(self.shape)


def param_table(cfg: BertConfig) -> list[Tensor]:
  """Every `BertForMaskedLM` tensor we have, in export order. The decoder weight
  and bias are tied in HF (to the word embeddings and `cls.predictions.bias`),
  so they are not in it."""
  h, nh, hd, v = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.vocab_size
  out = []

  def norm(prefix, *path):
    out.append(Tensor(f"{prefix}.weight", (*path, "scale"), (h,), (h,)))
    out.append(Tensor(f"{prefix}.bias", (*path, "bias"), (h,), (h,)))

  def dense(prefix, *path, kernel_shape, bias_shape):
    n_out = int(np.prod(bias_shape))
    n_in = int(np.prod(kernel_shape)) // n_out
    out.append(Tensor(f"{prefix}.weight", (*path, "kernel"), kernel_shape, (n_out, n_in),
                      linear=True))
    out.append(Tensor(f"{prefix}.bias", (*path, "bias"), bias_shape, (n_out,)))

  emb = ("bert", "embeddings")
  for hf, ours, rows in (("word", "word", v), ("position", "position", cfg.max_position),
                         ("token_type", "token_type", cfg.type_vocab_size)):
    out.append(Tensor(f"bert.embeddings.{hf}_embeddings.weight", (*emb, ours, "embedding"),
                      (rows, h), (rows, h)))
  norm("bert.embeddings.LayerNorm", *emb, "layer_norm")
  for i in range(cfg.num_layers):
    ours, hf = ("bert", f"layer_{i}"), f"bert.encoder.layer.{i}"
    for proj in ("query", "key", "value"):
      dense(f"{hf}.attention.self.{proj}", *ours, "attention", proj,
            kernel_shape=(h, nh, hd), bias_shape=(nh, hd))
    out.append(Tensor(f"{hf}.attention.output.dense.weight", (*ours, "attention", "out_kernel"),
                      (nh, hd, h), (h, nh * hd), linear=True))
    out.append(Tensor(f"{hf}.attention.output.dense.bias", (*ours, "attention", "out_bias"),
                      (h,), (h,)))
    norm(f"{hf}.attention.output.LayerNorm", *ours, "attention_norm")
    dense(f"{hf}.intermediate.dense", *ours, "intermediate",
          kernel_shape=(h, cfg.intermediate_size), bias_shape=(cfg.intermediate_size,))
    dense(f"{hf}.output.dense", *ours, "output",
          kernel_shape=(cfg.intermediate_size, h), bias_shape=(h,))
    norm(f"{hf}.output.LayerNorm", *ours, "output_norm")
  dense("cls.predictions.transform.dense", "mlm", "transform",
        kernel_shape=(h, h), bias_shape=(h,))
  norm("cls.predictions.transform.LayerNorm", "mlm", "transform_norm")
  out.append(Tensor("cls.predictions.bias", ("mlm", "output_bias"), (v,), (v,)))
  return out


def hf_state_dict(params: Mapping[str, Any], cfg: BertConfig) -> dict[str, np.ndarray]:
  """`BertForMaskedLM` tensors (float32, torch layout) from our param tree (`param_table`)."""
  if cfg.scan_layers:  # stacked blocks -> one entry per layer, as HF numbers them
    from tokendrop_jax.model.encoder import to_unrolled  # pylint: disable=g-import-not-at-top
    params = {**params, "bert": to_unrolled(params["bert"], cfg)}
  n_layers = sum(1 for k in params.get("bert", {}) if k.startswith("layer_"))
  if n_layers != cfg.num_layers:
    raise ValueError(f"params have {n_layers} layers, the config says {cfg.num_layers}")
  return {t.hf: np.ascontiguousarray(t.to_hf(_get(params, *t.path, shape=t.shape)))
          for t in param_table(cfg)}


# ---------------------------------------------------------------------------
# Tokenizer: SentencePiece proto -> `tokenizers` JSON; WordPiece -> BertTokenizerFast's files.

_SPECIAL = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
            "sep_token": "[SEP]", "mask_token": "[MASK]"}


def _parse_proto(proto: bytes):
  from sentencepiece import sentencepiece_model_pb2 as pb  # pylint: disable=g-import-not-at-top
  m = pb.ModelProto()
  m.ParseFromString(proto)
  return m, pb


def _normalizer(norm_spec) -> dict[str, Any]:
  """SentencePiece's normalisation: the charsmap (e.g. NFKC), then whitespace.

  SentencePiece collapses runs of U+0020 and drops them at both ends *after*
  the charsmap (which maps tabs, newlines etc. to spaces); only U+0020 counts.
  """
  steps = []
  if norm_spec.precompiled_charsmap:
    steps.append({"type": "Precompiled", "precompiled_charsmap":
                  base64.b64encode(norm_spec.precompiled_charsmap).decode("ascii")})
  if norm_spec.remove_extra_whitespaces:
    steps.append({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "})
    steps.append({"type": "Replace", "pattern": {"Regex": "^ | $"}, "content": ""})
  return {"type": "Sequence", "normalizers": steps}


def _bpe_merges(pieces: list[str], ids: Mapping[str, int]) -> list[list[str]]:
  """Merges in SentencePiece's priority: a pair merges into the piece with the
  highest score, and BPE scores fall with the id, so rank = id of the result."""
  merges = []
  for piece in pieces:
    for cut in range(1, len(piece)):
      left, right = piece[:cut], piece[cut:]
      if left in ids and right in ids:
        merges.append((ids[piece], ids[left], ids[right], left, right))
  merges.sort()
  return [[left, right] for *_, left, right in merges]


def _added_specials(ids: Mapping[str, int]) -> list[dict[str, Any]]:
  """HF's added tokens: the five specials at their ids, matched before normalising."""
  from tokendrop_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  return sorted(({"id": ids[p], "content": p, "single_word": False, "lstrip": False,
                  "rstrip": False, "normalized": False, "special": True}
                 for p in tok_lib.SPECIAL_PIECES), key=lambda a: a["id"])


def _bert_template(ids: Mapping[str, int]) -> dict[str, Any]:
  """`[CLS] A [SEP] (B [SEP])`, token_type_ids 0/1."""
  from tokendrop_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  cls, sep = tok_lib.CLS, tok_lib.SEP

  def special(piece, type_id):
    return {"SpecialToken": {"id": piece, "type_id": type_id}}

  def seq(name, type_id):
    return {"Sequence": {"id": name, "type_id": type_id}}

  return {"type": "TemplateProcessing",
          "single": [special(cls, 0), seq("A", 0), special(sep, 0)],
          "pair": [special(cls, 0), seq("A", 0), special(sep, 0), seq("B", 1), special(sep, 1)],
          "special_tokens": {p: {"id": p, "ids": [ids[p]], "tokens": [p]} for p in (cls, sep)}}


def _tokenizer_config(tokenizer_class: str, model_max_length: int, added: list,
                      **normaliser) -> dict[str, Any]:
  """tokenizer_config.json: the class, BERT's framing and specials, and (WordPiece) the
  normaliser settings the fast class rebuilds its normaliser from."""
  return {
      "tokenizer_class": tokenizer_class,
      **normaliser,
      "model_max_length": int(model_max_length),
      "padding_side": "right",
      "truncation_side": "right",
      "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],
      "clean_up_tokenization_spaces": False,
      "added_tokens_decoder": {str(a["id"]): {k: v for k, v in a.items() if k != "id"}
                               for a in added},
      **_SPECIAL,
  }


def hf_wordpiece_files(tok, model_max_length: int) -> dict[str, Any]:
  """{filename: json object or text} of `BertTokenizerFast` equal to the WordPiece `tok`:
  its tokenizer.json with the specials as added tokens and BERT's framing, BERT's
  vocab.txt, and a tokenizer_config.json whose do_lower_case matches (the fast class
  rebuilds its normaliser from it)."""
  from tokendrop_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  spec = json.loads(tok.to_json())
  ids = dict(zip(tok_lib.SPECIAL_PIECES, tok.special_ids))
  added = _added_specials(ids)
  spec.update(added_tokens=added, post_processor=_bert_template(ids))
  norm = tok.normalizer_settings
  config = _tokenizer_config("BertTokenizerFast", model_max_length, added,
                             do_lower_case=norm["lowercase"], strip_accents=norm["strip_accents"],
                             tokenize_chinese_chars=norm["handle_chinese_chars"])
  return {"tokenizer.json": spec, "tokenizer_config.json": config,
          "special_tokens_map.json": dict(_SPECIAL), "vocab.txt": tok.vocab_txt()}


def tokenizer_files(tok, model_max_length: int) -> dict[str, Any]:
  """The HF tokenizer files of either kind of tokenizer."""
  if tok.kind == "wordpiece":
    return hf_wordpiece_files(tok, model_max_length)
  return hf_tokenizer_files(tok.serialized_model_proto(), model_max_length)


def hf_tokenizer_files(proto: bytes, model_max_length: int) -> dict[str, dict]:
  """{filename: json object} of a fast tokenizer equal to the SentencePiece model.

  The special tokens, found by name at their ids (ours: [PAD] 0, [UNK] 1, [CLS] 2,
  [SEP] 3, [MASK] 4), are added as special tokens so that "[MASK]" in text is
  the mask (as HF pipelines expect); `[CLS] A [SEP] (B [SEP])` framing
  with token_type_ids 0/1, as in pretraining.
  """
  from tokendrop_jax.data import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  m, pb = _parse_proto(proto)
  spec, norm_spec = m.trainer_spec, m.normalizer_spec
  pieces = [p.piece for p in m.pieces]
  ids = {p: i for i, p in reversed(list(enumerate(pieces)))}  # the first of repeats
  for special in tok_lib.SPECIAL_PIECES:
    if special not in ids:
      raise ValueError(f"the special token {special} is missing in the SentencePiece model")
  if spec.treat_whitespace_as_suffix or not norm_spec.escape_whitespaces:
    raise ValueError("SentencePiece models with treat_whitespace_as_suffix or without "
                     "escape_whitespaces cannot be converted")
  if spec.byte_fallback:
    raise ValueError("SentencePiece models with byte_fallback cannot be converted "
                     "(train without it: tokendrop_jax.data.tokenizer.train_tokenizer)")
  model_type = pb.TrainerSpec.ModelType.Name(spec.model_type)
  if model_type == "UNIGRAM":
    model = {"type": "Unigram", "unk_id": ids[tok_lib.UNK],
             "vocab": [[p.piece, float(p.score)] for p in m.pieces], "byte_fallback": False}
  elif model_type == "BPE":
    normal = pb.ModelProto.SentencePiece.Type.Value("NORMAL")
    mergeable = {p.piece: i for i, p in enumerate(m.pieces) if p.type == normal}
    model = {"type": "BPE", "dropout": None, "unk_token": tok_lib.UNK,
             "continuing_subword_prefix": None, "end_of_word_suffix": None,
             "fuse_unk": True, "byte_fallback": False, "ignore_merges": False,
             "vocab": {p: i for i, p in enumerate(pieces)},
             "merges": _bpe_merges(list(mergeable), mergeable)}
  else:
    raise ValueError(f"SentencePiece model type {model_type} cannot be converted "
                     "(only UNIGRAM and BPE)")
  prepend = "always" if norm_spec.add_dummy_prefix else "never"
  metaspace = {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": prepend,
               "split": True}
  added = _added_specials(ids)
  tokenizer = {
      "version": "1.0",
      "truncation": None,
      "padding": None,
      "added_tokens": added,
      "normalizer": _normalizer(norm_spec),
      "pre_tokenizer": metaspace,
      "post_processor": _bert_template(ids),
      "decoder": metaspace,
      "model": model,
  }
  # The generic fast class: BertTokenizerFast would swap in its WordPiece normaliser.
  # Everything it needs is in tokenizer.json.
  config = _tokenizer_config("PreTrainedTokenizerFast", model_max_length, added)
  return {"tokenizer.json": tokenizer, "tokenizer_config.json": config,
          "special_tokens_map.json": dict(_SPECIAL)}


# ---------------------------------------------------------------------------
# Files.


def _write_json(path: str, obj) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2, ensure_ascii=False)
    f.write("\n")


def _write_folder(d: str, params, cfg: BertConfig, tok, meta: dict) -> None:
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  weights = os.path.join(d, "model.safetensors")
  save_file(hf_state_dict(params, cfg), weights, metadata={"format": "pt"})
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(weights, 0o666 & ~umask)  # safetensors creates it 0600
  _write_json(os.path.join(d, "config.json"), hf_config(cfg, tok.pad_id))
  for name, obj in tokenizer_files(tok, cfg.max_position).items():
    if isinstance(obj, str):  # vocab.txt
      with open(os.path.join(d, name), "w", encoding="utf-8") as f:
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


def export(workdir: str, output: str, step: int | None = None,
           overwrite: bool = False) -> str:
  """Writes the HF folder for `workdir`'s checkpoint (latest or `step`) -> output.

  The folder is written beside `output` and renamed into place, so a failed
  export never leaves a half-written folder (nor loses an old one). A bucket
  `output` (gs://...) is written locally and uploaded, tokendrop_export.json
  last; with --overwrite, files of the old folder that the new one lacks are
  removed after the upload.
  """
  # Imported here so that `--help` and the pure functions need no orbax/jax.
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
  if files.is_remote(output):
    return _export_to_bucket(output, overwrite, params, cfg, tok, meta, workdir, step)
  parent = os.path.dirname(output)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(output)}.tmp-")
  try:
    _write_folder(tmp, params, cfg, tok, meta)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
    _check_output(output, overwrite)  # Still true after the restore?
    old = None
    if os.path.lexists(output):
      old = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(output)}.old-")
      os.rename(output, os.path.join(old, "x"))
    try:
      os.rename(tmp, output)
    except BaseException:
      if old:  # Put the old folder back.
        os.rename(os.path.join(old, "x"), output)
        os.rmdir(old)
      raise
    if old:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info("Exported step %d of %s to %s.", step, workdir, output)
  return output


def _export_to_bucket(output, overwrite, params, cfg, tok, meta, workdir, step) -> str:
  tmp = tempfile.mkdtemp(prefix="tokendrop-export-")
  try:
    _write_folder(tmp, params, cfg, tok, meta)
    _check_output(output, overwrite)  # Still true after the restore?
    old = set(files.listdir(output))
    files.publish_dir(tmp, output, last=EXPORT_META_FILE)
    for name in old - set(os.listdir(tmp)):
      files.rmtree(files.join(output, name))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
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
