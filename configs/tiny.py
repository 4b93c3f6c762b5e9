"""A few hundred steps end to end in 1-3 minutes on 2 CPU cores (install check, tests)."""
from tokendrop_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = "tiny"
  c.model.update(vocab_size=1000, hidden_size=64, num_layers=4, num_heads=2,
                 intermediate_size=256, max_position=64)
  c.token_drop.keep_tokens = 32
  c.data.update(demo_corpus=True, seq_len=64, max_predictions_per_seq=10, global_batch_size=16)
  c.optim.update(learning_rate=1e-3, warmup_steps=30)
  c.train.update(num_steps=300, log_every=10, eval_every=100, eval_batches=4,
                 checkpoint_every=50, keep_checkpoints=2)
  return config_lib.apply_variant(c, arg)
