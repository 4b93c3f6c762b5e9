"""Data: text -> tokenizer -> TFDS/ArrayRecord corpus -> grain batches.

  tokenizer.py     SentencePiece or WordPiece (BERT's vocab.txt); [PAD] [UNK] [CLS] [SEP]
                   [MASK] found by name at any ids (ours 0..4); load_tokenizer
  text_builder.py  sources (text/JSONL/Parquet files, TFDS, mixtures, carved validation),
                   build_corpus / build_from_source, load_token_counts, open_split
  pipeline.py      make_pretrain_iterator / make_eval_iterator (packing; one virtual shard)
  masking.py       mask_batch: token, whole-word and n-gram masking; SpecialIds
  shards.py        ShardedIterator: the virtual shards a process reads, as one iterator
  demo_corpus.py   write_demo_corpus: ~1.5 MB of English from the standard library

Kept import-light: import the submodule you need (text_builder pulls in TFDS).
"""
