"""CPU step-time benchmark size: 6 layers, hidden 256, seq 256, keep 128, batch 16."""
from tokendrop_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = "bench_cpu"
  c.model.update(vocab_size=8192, hidden_size=256, num_layers=6, num_heads=4,
                 intermediate_size=1024, max_position=256)
  c.token_drop.keep_tokens = 128
  c.data.update(seq_len=256, max_predictions_per_seq=40, global_batch_size=16)
  c.optim.update(learning_rate=5e-4, warmup_steps=100)
  c.train.update(num_steps=2000, log_every=20, eval_every=500, eval_batches=10,
                 checkpoint_every=500)
  return config_lib.apply_variant(c, arg)
