#!/usr/bin/env bash
# The step on one accelerator (GPU or TPU): full vs token-drop, each attention kernel and
# PRNG, bert_base in bfloat16 at seq 128 and 512. Writes OUTDIR/accelerator.json.
#   benchmarks/accelerator.sh OUTDIR [--smoke] [--cases=a,b] [--budget_s=S]
# Meant to finish in under 5 minutes on one H100 (compiles included): cases left when
# --budget_s (default 270 s) has gone are recorded as skipped. --smoke: tiny sizes, CPU.
set -euo pipefail
USAGE_LINES=2,6
source "$(dirname "$0")/outdir.sh" "$@"
shift
exec "$PY" benchmarks/accelerator.py --output="$OUT/accelerator.json" "$@"
