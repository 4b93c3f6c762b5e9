"""Hugging Face tokenizer files of our tokenizers, and our tokenizer of theirs.

Export writes a fast tokenizer that gives our ids: a SentencePiece proto as a
`tokenizers` JSON (`hf_tokenizer_files`), a WordPiece as BERT's own files
(`hf_wordpiece_files`). Import reads a BERT folder's WordPiece back
(`read_tokenizer`). The writers are pure (tokenizer in, {filename: object} out).
"""
from __future__ import annotations

import base64
import json
from typing import Any, Mapping

from tokendrop_jax import files
from tokendrop_jax.data import vocab
from tokendrop_jax.data import wordpiece

# HF's names of our five specials (special_tokens_map.json, tokenizer_config.json).
_SPECIAL = {"pad_token": vocab.PAD, "unk_token": vocab.UNK, "cls_token": vocab.CLS,
            "sep_token": vocab.SEP, "mask_token": vocab.MASK}


# ---------------------------------------------------------------------------
# Shared by both kinds: the specials, BERT's framing, tokenizer_config.json.


def _added_specials(ids: Mapping[str, int]) -> list[dict[str, Any]]:
  """HF's added tokens: the five specials at their ids, matched before normalising."""
  return sorted(({"id": ids[p], "content": p, "single_word": False, "lstrip": False,
                  "rstrip": False, "normalized": False, "special": True}
                 for p in vocab.SPECIAL_PIECES), key=lambda a: a["id"])


def _bert_template(ids: Mapping[str, int]) -> dict[str, Any]:
  """`[CLS] A [SEP] (B [SEP])`, token_type_ids 0/1."""
  cls, sep = vocab.CLS, vocab.SEP

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


def tokenizer_files(tok, model_max_length: int) -> dict[str, Any]:
  """The HF tokenizer files of either kind of tokenizer."""
  if tok.kind == "wordpiece":
    return hf_wordpiece_files(tok, model_max_length)
  return hf_tokenizer_files(tok.serialized_model_proto(), model_max_length)


# ---------------------------------------------------------------------------
# WordPiece -> BertTokenizerFast's files.


def hf_wordpiece_files(tok, model_max_length: int) -> dict[str, Any]:
  """{filename: json object or text} of `BertTokenizerFast` equal to the WordPiece `tok`:
  its tokenizer.json with the specials as added tokens and BERT's framing, BERT's
  vocab.txt, and a tokenizer_config.json whose do_lower_case matches (the fast class
  rebuilds its normaliser from it)."""
  spec = json.loads(tok.to_json())
  ids = dict(zip(vocab.SPECIAL_PIECES, tok.special_ids))
  added = _added_specials(ids)
  spec.update(added_tokens=added, post_processor=_bert_template(ids))
  norm = tok.normalizer_settings
  config = _tokenizer_config("BertTokenizerFast", model_max_length, added,
                             do_lower_case=norm["lowercase"], strip_accents=norm["strip_accents"],
                             tokenize_chinese_chars=norm["handle_chinese_chars"])
  return {"tokenizer.json": spec, "tokenizer_config.json": config,
          "special_tokens_map.json": dict(_SPECIAL), "vocab.txt": tok.vocab_txt()}


# ---------------------------------------------------------------------------
# SentencePiece proto -> `tokenizers` JSON.


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


def hf_tokenizer_files(proto: bytes, model_max_length: int) -> dict[str, dict]:
  """{filename: json object} of a fast tokenizer equal to the SentencePiece model.

  The special tokens, found by name at their ids (ours: [PAD] 0, [UNK] 1, [CLS] 2,
  [SEP] 3, [MASK] 4), are added as special tokens so that "[MASK]" in text is
  the mask (as HF pipelines expect); `[CLS] A [SEP] (B [SEP])` framing
  with token_type_ids 0/1, as in pretraining.
  """
  m, pb = _parse_proto(proto)
  spec, norm_spec = m.trainer_spec, m.normalizer_spec
  pieces = [p.piece for p in m.pieces]
  ids = {p: i for i, p in reversed(list(enumerate(pieces)))}  # the first of repeats
  for special in vocab.SPECIAL_PIECES:
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
    model = {"type": "Unigram", "unk_id": ids[vocab.UNK],
             "vocab": [[p.piece, float(p.score)] for p in m.pieces], "byte_fallback": False}
  elif model_type == "BPE":
    normal = pb.ModelProto.SentencePiece.Type.Value("NORMAL")
    mergeable = {p.piece: i for i, p in enumerate(m.pieces) if p.type == normal}
    model = {"type": "BPE", "dropout": None, "unk_token": vocab.UNK,
             "continuing_subword_prefix": None, "end_of_word_suffix": None,
             "fuse_unk": True, "byte_fallback": False, "ignore_merges": False,
             "vocab": {p: i for i, p in enumerate(pieces)},
             "merges": _bpe_merges(list(mergeable), mergeable)}
  else:
    raise ValueError(f"SentencePiece model type {model_type} cannot be converted "
                     "(only UNIGRAM and BPE)")
  prepend = "always" if norm_spec.add_dummy_prefix else "never"
  metaspace = {"type": "Metaspace", "replacement": vocab.WORD_START,  # the escaped space
               "prepend_scheme": prepend, "split": True}
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
# A BERT folder's tokenizer -> ours.


def read_tokenizer(hf_dir: str):
  """DIR's WordPiece tokenizer: tokenizer.json, else vocab.txt with
  tokenizer_config.json's do_lower_case (inferred from the vocabulary without it)."""
  tok_json = files.join(hf_dir, "tokenizer.json")
  if files.isfile(tok_json):
    return wordpiece.WordPieceTokenizer.from_json(tok_json)
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
  return wordpiece.WordPieceTokenizer.from_vocab(vocab, lowercase)
