"""Linear probes of frozen pretrained encoders on SST-2, layer by layer.

  .venv/bin/python benchmarks/sst2_probe.py --runs=workdir/quality/none,workdir/quality/loss_ema \
      --sst2_train=workdir/quality/sst2_train_8000.tsv --sst2_dev=../shared/data/sst2/dev.tsv

Fine-tuning accuracy mixes two things: what the encoder knows and how the
fine-tuning run went (seed, learning rate). A linear probe on frozen features
measures only the first, and it has no seed: the logistic regression is
convex. For each pretraining run this embeds the SST-2 sentences with the
full model (no dropping, as at fine-tuning time), mean-pools every layer's
output over the real tokens, fits an L2 logistic regression on the train
sentences per layer, and scores the dev set. Where a token-dropping encoder
falls behind the baseline tells where its representation differs: in the
middle layers it trained on half the tokens, or only at the top.

Writes --output (JSON) and a PNG beside it: dev accuracy against layer, one
curve per run.
"""
from __future__ import annotations

import os

import numpy as np
from absl import app, flags

_RUNS = flags.DEFINE_list("runs", None, "Pretraining workdirs (name = the directory's name).")
_TRAIN = flags.DEFINE_string("sst2_train", None, "SST-2 train TSV (sentence, label).")
_DEV = flags.DEFINE_string("sst2_dev", None, "SST-2 dev TSV.")
_SEQ = flags.DEFINE_integer("max_seq_len", 64, "Tokens per sentence, as in the fine-tuning.")
_L2 = flags.DEFINE_float("l2", 1e-3, "L2 penalty of the probe (on standardised features).")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/sst2_probe.json", "JSON path.")


def layer_features(workdir: str, splits, max_seq_len: int,
                   batch: int = 128) -> list[tuple[np.ndarray, np.ndarray]]:
  """Per split of examples: ([layers + 1, N, hidden] mean-pooled outputs of the
  embeddings and every layer, labels [N]). One checkpoint read and one compile for all."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from tokendrop_jax import config_lib
  from tokendrop_jax.data import glue
  from tokendrop_jax.data.tokenizer import load_tokenizer
  from tokendrop_jax.model.encoder import BertEncoder
  from tokendrop_jax.training import pretrained
  from tokendrop_jax.training import workdir as workdir_lib

  params, config, _ = pretrained.load_pretrained(workdir)
  cfg = config_lib.model_config(config)
  tokenizer = load_tokenizer(workdir_lib.tokenizer_path(workdir))
  model = BertEncoder(cfg)

  @jax.jit
  def pooled(p, ids, mask, types):
    _, inter = model.apply({"params": p}, ids, mask, types, capture_intermediates=True)
    outs = [inter["intermediates"]["embeddings"]["__call__"][0]]
    outs += [inter["intermediates"][f"layer_{i}"]["__call__"][0] for i in range(cfg.num_layers)]
    m = mask[None, :, :, None].astype(jnp.float32)  # [1, batch, seq, 1]
    x = jnp.stack(outs).astype(jnp.float32)          # [layers + 1, batch, seq, hidden]
    return (x * m).sum(2) / m.sum(2)                 # [layers + 1, batch, hidden]

  p = nn.unbox(params["bert"])

  def embed(examples):
    enc = glue.encode(examples, tokenizer, max_seq_len)
    n, out = len(enc["input_ids"]), []
    for i in range(0, n, batch):
      rows = {k: enc[k][i:i + batch] for k in ("input_ids", "input_mask", "token_type_ids")}
      pad = batch - len(rows["input_ids"])  # one shape: one compile
      rows = {k: np.pad(v, ((0, pad), (0, 0)), constant_values=1 if k == "input_mask" else 0)
              for k, v in rows.items()}
      out.append(np.asarray(pooled(p, rows["input_ids"], rows["input_mask"],
                                   rows["token_type_ids"]))[:, :batch - pad])
    return np.concatenate(out, axis=1), np.asarray(enc["labels"])

  return [embed(examples) for examples in splits]


def fit_probe(x: np.ndarray, y: np.ndarray, l2: float, steps: int = 300) -> tuple[np.ndarray, float]:
  """L2 logistic regression by Newton's method -> (weights [d + 1], train accuracy)."""
  xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  w = np.zeros(xb.shape[1])
  reg = l2 * len(x) * np.eye(xb.shape[1])
  reg[-1, -1] = 0.0  # the bias is not penalised
  for _ in range(steps):
    p = 1.0 / (1.0 + np.exp(-xb @ w))
    grad = xb.T @ (p - y) + reg @ w
    hess = (xb * (p * (1 - p))[:, None]).T @ xb + reg
    step = np.linalg.solve(hess, grad)
    w -= step
    if np.abs(step).max() < 1e-8:
      break
  return w, float(((xb @ w > 0) == y).mean())


def probe_accuracy(train_x, train_y, dev_x, dev_y, l2):
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6  # standardised on the train split
  w, train_acc = fit_probe((train_x - mean) / std, train_y, l2)
  dev = np.concatenate([(dev_x - mean) / std, np.ones((len(dev_x), 1))], axis=1)
  return float(((dev @ w > 0) == dev_y).mean()), train_acc


def main(argv):
  del argv
  from tokendrop_jax import benchmark
  from tokendrop_jax.data import glue
  spec = glue.get_task("sst2")
  train, dev = glue.read_tsv(_TRAIN.value, spec), glue.read_tsv(_DEV.value, spec)
  results = {"sst2_train": _TRAIN.value, "sst2_dev": _DEV.value, "max_seq_len": _SEQ.value,
             "l2": _L2.value, "n_train": len(train.labels), "n_dev": len(dev.labels), "runs": {}}
  for workdir in _RUNS.value:
    name = os.path.basename(os.path.normpath(workdir))
    (tx, ty), (dx, dy) = layer_features(workdir, (train, dev), _SEQ.value)
    accs = [probe_accuracy(tx[i], ty, dx[i], dy, _L2.value) for i in range(len(tx))]
    results["runs"][name] = {"workdir": workdir, "dev_accuracy_by_layer": [a for a, _ in accs],
                             "train_accuracy_by_layer": [t for _, t in accs]}
    print(f"{name:18s} dev accuracy by layer (0 = embeddings): "
          + " ".join(f"{a:.3f}" for a, _ in accs), flush=True)
  benchmark.write_results(results, _OUTPUT.value, plot)


def plot(results, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, r in results["runs"].items():
    accs = r["dev_accuracy_by_layer"]
    ax.plot(range(len(accs)), accs, marker="o", label=name)
  ax.set_xlabel("layer (0 = embeddings)")
  ax.set_ylabel("SST-2 dev accuracy, linear probe")
  ax.set_title(f"frozen mean-pooled features, {results['n_train']} train sentences")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  flags.mark_flags_as_required(["runs", "sst2_train", "sst2_dev"])
  app.run(main)
