"""A 6-layer model for quality experiments on one machine (e.g. the 44 MB offline corpus)."""
from tokendrop_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = "small"
  c.model.update(vocab_size=8192, hidden_size=256, num_layers=6, num_heads=4,
                 intermediate_size=1024, max_position=256)
  c.token_drop.keep_tokens = 128
  c.data.update(seq_len=256, max_predictions_per_seq=40, global_batch_size=32)
  c.optim.update(learning_rate=5e-4, warmup_steps=500)
  c.train.update(num_steps=20_000, log_every=50, eval_every=1000, eval_batches=20,
                 checkpoint_every=1000)
  return config_lib.apply_variant(c, arg)
