"""Hugging Face BERT: what export and import_hf share, so the two directions agree.

  bert_config.py      our BertConfig <-> HF's config.json (sizes, hidden_act), refusals
  params.py           the one table of our param paths <-> BertForMaskedLM tensor names,
                      shapes, transposes; hf_state_dict (ours -> HF), params_from_hf (back)
  tokenizer_files.py  SentencePiece -> tokenizer.json, WordPiece -> BERT's files; reading them
  weights.py          model.safetensors (or its sharded index): reading without pickle, bf16 too

The mains are `tokendrop_jax.export` and `tokendrop_jax.import_hf`.
"""
