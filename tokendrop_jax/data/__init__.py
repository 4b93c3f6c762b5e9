"""Data: text -> tokenizer -> TFDS/ArrayRecord corpus -> grain batches.

  tokenizer.py     SentencePiece; [PAD] [UNK] [CLS] [SEP] [MASK] found by name at any
                   ids (ours 0..4); load_tokenizer (either kind)
  wordpiece.py     BERT's WordPiece (vocab.txt or tokenizer.json) and its trainer
  text_readers.py  documents of one text, JSON-lines or Parquet file
  text_sources.py  sources (files, TFDS, mixtures, carved validation)
  encode_pool.py   documents -> token ids, in a process pool
  text_builder.py  build_corpus / build_from_source, load_token_counts, open_split
  pipeline.py      make_pretrain_iterator / make_eval_iterator (packing; one virtual shard)
  masking.py       mask_batch: token, whole-word and n-gram masking; SpecialIds
  shards.py        ShardedIterator: the virtual shards a process reads, as one iterator
  demo_corpus.py   write_demo_corpus: ~1.5 MB of English from the standard library

Kept import-light: import the submodule you need (text_builder pulls in TFDS).
"""
