#!/usr/bin/env bash
# Quality at equal wall-clock budgets on one accelerator: `small` in bfloat16, batch 256
# (16x the CPU experiment's), none vs loss_ema vs loss_ema+sctd, each run's steps planned
# to take TRAIN_TIME_S of training, then SST-2 fine-tuning (3 seeds, 8000 examples).
#   benchmarks/quality_gpu.sh OUTDIR [--smoke] [--train_time_s=45] [quality_offline_en.py flags]
# Writes OUTDIR/quality_gpu.{json,png} (the CPU experiment's JSON, plus each run's planned
# steps and tokens, and the calibrated step times). Corpus and SST-2 default to ../shared.
# --smoke: tiny sizes on the CPU (a few seconds per run; the test suite runs it).
set -euo pipefail
USAGE_LINES=2,8
source "$(dirname "$0")/outdir.sh" "$@"
shift
ARGS=(--model_config=configs/small.py --dtype=bfloat16 --batch_size=256 --train_time_s=45
      --evals_per_run=10 --strategies=none,loss_ema,loss_ema+sctd --pretrain_seeds=0
      --sst2_seeds=0,1,2 --sst2_train_examples=8000 --data_workers=8
      --corpus_dir=../shared/data/offline_en --sst2_dir=../shared/data/sst2)
REST=()
for a in "$@"; do
  if [[ "$a" == --smoke ]]; then
    ARGS+=(--model_config=configs/tiny.py --dtype=float32 --batch_size=8 --train_time_s=3
           --evals_per_run=2 --sst2_seeds=0 --sst2_train_examples=64 --data_workers=0)
  else
    REST+=("$a")
  fi
done
exec "$PY" benchmarks/quality_offline_en.py --workdir="$OUT/runs" --output="$OUT/quality_gpu.json" \
  --compilation_cache_dir="$OUT/jax_cache" "${ARGS[@]}" "${REST[@]}"
