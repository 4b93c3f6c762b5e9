"""BERT-large with the token-dropping paper's recipe (24 layers, hidden 1024)."""
from tokendrop_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = "bert_large"
  c.model.update(vocab_size=30522, hidden_size=1024, num_layers=24, num_heads=16,
                 intermediate_size=4096, max_position=512, dtype="bfloat16")
  c.token_drop.update(keep_tokens=256, ema_init=10.0, ema_beta=0.995)
  # 64 virtual input shards: up to 64 hosts each read only the rows of their own devices.
  c.data.update(seq_len=512, max_predictions_per_seq=76, global_batch_size=512, num_shards=64)
  c.optim.update(learning_rate=1e-4, weight_decay=0.01, warmup_steps=10_000)
  c.train.update(num_steps=1_000_000, log_every=100, eval_every=10_000, checkpoint_every=10_000)
  return config_lib.apply_variant(c, arg)
