"""Our model config <-> Hugging Face's BERT `config.json`.

Export writes HF's config of our `BertConfig` (`hf_config`); import reads one,
refuses what our BERT cannot run, and takes the model sizes from it
(`read_hf_config`, `apply_model`). The activation names of both directions
sit side by side here.
"""
from __future__ import annotations

import json
import logging
from typing import Any, Iterable, Mapping

from tokendrop_jax import files
from tokendrop_jax.model.config import BertConfig

HF_CONFIG = "config.json"
ARCHITECTURES = ("BertForMaskedLM", "BertForPreTraining", "BertModel")

# model.hidden_act -> Hugging Face's name of the same function (export).
HF_HIDDEN_ACT = {"gelu_tanh": "gelu_new", "gelu": "gelu"}
# Hugging Face's hidden_act -> model.hidden_act (import; HF has two names for tanh GELU).
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


def hf_config(cfg: BertConfig, pad_token_id: int = 0) -> dict[str, Any]:
  """The Hugging Face `BertConfig` of our model (post-LN BERT, `model.hidden_act`);
  `pad_token_id`: the tokenizer's [PAD] (0 in ours, also in BERT's vocab.txt).
  Keys in this order (config.json's bytes), not `HF_FIELDS`' (import's error order)."""
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
