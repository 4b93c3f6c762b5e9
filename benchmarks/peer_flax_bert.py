"""Our train step against Hugging Face's FlaxBertForMaskedLM, same config, one run.

  .venv/bin/python benchmarks/peer_flax_bert.py --config=configs/bench_cpu.py \
      --output=benchmarks/results/peer_flax_bert.json

The peer is the usual JAX choice (transformers 4.57.x, `run_mlm_flax.py` style):
logits at every position, loss weighted by the masked positions, the same optax
AdamW (warm-up, decay mask, clipping) as ours. All three steps (peer, our full,
our token-drop) are jitted with donation and timed alternately on the same
batch after compile and warm-up; medians are reported. Needs requirements-dev.txt.

The warm-up is long on purpose: on the 2-core CPU the peer's first 5-15 steps after
compiling ran 1.3-1.6x slower than its steady state while ours were flat, so a short
warm-up put those steps into the peer's median and flattered us.
"""
from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """Only when this is the main: `matmul_floor.py` imports `peer_step_fn`."""
  config_flags.DEFINE_config_file("config", "configs/bench_cpu.py", "Config file.")
  flags.DEFINE_string("output", "benchmarks/results/peer_flax_bert.json", "JSON path.")
  flags.DEFINE_integer("steps", 20, "Timed steps per contender.")
  flags.DEFINE_integer("warmup", 15, "Untimed steps after compiling.")


def peer_step_fn(config):
  """(init_state, step) for transformers' FlaxBertForMaskedLM with our optimizer."""
  import jax
  import jax.numpy as jnp
  import optax
  from transformers import BertConfig, FlaxBertForMaskedLM

  from tokendrop_jax.hf.bert_config import HF_HIDDEN_ACT
  from tokendrop_jax.training import optim

  m = config.model
  hf_cfg = BertConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size,
                      num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads,
                      intermediate_size=m.intermediate_size, max_position_embeddings=m.max_position,
                      hidden_act=HF_HIDDEN_ACT[m.hidden_act], hidden_dropout_prob=m.dropout_rate,
                      attention_probs_dropout_prob=m.attention_dropout_rate,
                      layer_norm_eps=m.layer_norm_eps)
  model = FlaxBertForMaskedLM(hf_cfg, seed=0, dtype=jnp.float32)
  optimizer, _ = optim.make_optimizer(config.optim, config.train.num_steps)
  params = model.params

  def step(state, batch):
    params, opt_state, rng = state
    rng, dropout_rng = jax.random.split(rng)
    b, s = batch["input_ids"].shape
    # run_mlm_flax layout: labels at every position, weight 1 where masked.
    label_w = jnp.zeros((b, s)).at[jnp.arange(b)[:, None], batch["masked_lm_positions"]].set(
        batch["masked_lm_weights"])
    labels = jnp.zeros((b, s), jnp.int32).at[jnp.arange(b)[:, None],
                                             batch["masked_lm_positions"]].set(batch["masked_lm_ids"])

    def loss_fn(p):
      logits = model(batch["input_ids"], batch["input_mask"], batch["token_type_ids"], params=p,
                     dropout_rng=dropout_rng, train=True)[0]
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return (ce * label_w).sum() / label_w.sum()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, rng), loss

  return (params, optimizer.init(params), jax.random.PRNGKey(0)), step


def main(argv):
  del argv
  import jax

  from tokendrop_jax import benchmark

  config = FLAGS.config
  bench = benchmark.setup(config)
  data, td = config.data, config.token_drop
  peer_state, peer_step = peer_step_fn(config)
  ours, our_states = bench.contenders({"ours_full": bench.settings.full(),
                                       "ours_drop": bench.settings})
  times, _ = benchmark.time_steps({"flax_bert_peer": jax.jit(peer_step, donate_argnums=0), **ours},
                                  {"flax_bert_peer": peer_state, **our_states}, bench.batch,
                                  FLAGS.steps, FLAGS.warmup)
  med = benchmark.medians(times)
  over_peer = benchmark.ratios(med, "flax_bert_peer")
  results = {
      "config": config.name,
      "median_step_s": med,
      "ours_full_over_peer": over_peer["ours_full"],
      "ours_drop_over_peer": over_peer["ours_drop"],
      "step_times_s": times, "warmup_steps": FLAGS.warmup,
      "batch_size": data.global_batch_size, "seq_len": data.seq_len,
      "keep_tokens": td.keep_tokens,
  }
  print(json.dumps({k: results[k] for k in ("median_step_s", "ours_full_over_peer",
                                            "ours_drop_over_peer")}, indent=2))
  benchmark.write_results(results, FLAGS.output, _plot)


def _plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = ["flax_bert_peer", "ours_full", "ours_drop"]
  labels = ["HF FlaxBertForMaskedLM", "tokendrop_jax full", "tokendrop_jax token drop"]
  vals = [results["median_step_s"][n] for n in names]
  fig, ax = plt.subplots(figsize=(6, 3.2))
  ax.barh(labels, vals, color=["#999999", "#3b75af", "#e1812c"])
  for i, v in enumerate(vals):
    ax.text(v, i, f" {v:.2f} s", va="center")
  ax.set_xlabel("median train-step time (s), lower is better")
  ax.set_title(f"{results['config']}: batch {results['batch_size']}, seq {results['seq_len']}")
  ax.set_xlim(0, max(vals) * 1.25)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
