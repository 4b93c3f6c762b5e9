#!/usr/bin/env bash
# The step on one accelerator (GPU or TPU): full vs token-drop, each attention kernel and
# PRNG, bert_base in bfloat16 at seq 128 and 512, then a profile of the fastest case.
#   benchmarks/accelerator.sh OUTDIR [--smoke] [--cases=a,b] [--budget_s=S]
# Writes OUTDIR/accelerator.json, then OUTDIR/profile_full.json and profile_drop.json (the
# fastest case's kernels summed by kind and by part of the model). Meant to finish in under
# 8 minutes on one H100, compiles included: cases left when --budget_s (default 270 s) has
# gone are recorded as skipped; each profile compiles its step again (about 35 s on a GPU).
# --smoke: tiny sizes, CPU.
set -euo pipefail
USAGE_LINES=2,9
source "$(dirname "$0")/outdir.sh" "$@"
shift
"$PY" benchmarks/accelerator.py --output="$OUT/accelerator.json" "$@"
if case_flags=$("$PY" benchmarks/accelerator_cases.py "$OUT/accelerator.json"); then
  echo "profiling the fastest case: $case_flags"
  for kind in full drop; do
    # shellcheck disable=SC2086  # the flags are words
    "$PY" benchmarks/profile_step.py $case_flags --kind=$kind --output="$OUT/profile_$kind.json" \
      || echo "profile of the $kind step failed; accelerator.json stands"
  done
fi
