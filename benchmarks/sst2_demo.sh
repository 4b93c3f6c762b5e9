#!/usr/bin/env bash
# SST-2 dev accuracy of `demo` pretrained with token dropping (loss_ema) and without (none),
# fine-tuned with identical settings. Needs GLUE SST-2's train.tsv/dev.tsv (SST2_DIR).
#   bash benchmarks/sst2_demo.sh [SST2_DIR]      (default ../shared/data/sst2)
set -euo pipefail
cd "$(dirname "$0")/.."
SST2_DIR=${1:-../shared/data/sst2}
PY=.venv/bin/python
for v in loss_ema none; do
  [ -f workdir/demo_$v/summary.json ] || $PY -m tokendrop_jax.train --config=configs/demo.py:$v \
      --workdir=workdir/demo_$v --config.data.dataset_dir=workdir/demo_data
  $PY -m tokendrop_jax.finetune --config=configs/glue.py:sst2 --config.init_from=workdir/demo_$v \
      --workdir=workdir/demo_${v}_sst2 --config.data.train_file=$SST2_DIR/train.tsv \
      --config.data.eval_file=$SST2_DIR/dev.tsv --config.data.seq_len=64 \
      --config.train.num_epochs=1 --config.optim.learning_rate=1e-4 \
      --config.data.global_batch_size=32 --config.train.log_every=200
done
$PY - <<'PY'
import json
out = {}
for v in ("loss_ema", "none"):
  r = json.load(open(f"workdir/demo_{v}_sst2/results.json"))
  s = json.load(open(f"workdir/demo_{v}/summary.json"))
  out[v] = {"pretrain_eval_loss": s["eval/loss"], "pretrain_train_time_s": s["train_time_s"],
            "sst2_dev_best": r["best"], "sst2_dev_last": r["last"]}
  print(v, json.dumps(out[v]))
json.dump(out, open("benchmarks/results/sst2_demo.json", "w"), indent=2)
PY
