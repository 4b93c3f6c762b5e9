"""The README's main job: token-drop pretraining on the built-in corpus, minutes on 2 cores."""
from tokendrop_jax import config_lib


def get_config(arg=None):
  c = config_lib.base_config()
  c.name = "demo"
  c.model.update(vocab_size=4000, hidden_size=128, num_layers=4, num_heads=2,
                 intermediate_size=512, max_position=128)
  c.token_drop.keep_tokens = 64
  c.data.update(demo_corpus=True, seq_len=128, max_predictions_per_seq=20, global_batch_size=32)
  c.optim.update(learning_rate=1e-3, warmup_steps=80)
  c.train.update(num_steps=800, log_every=25, eval_every=200, eval_batches=10,
                 checkpoint_every=200)
  return config_lib.apply_variant(c, arg)
