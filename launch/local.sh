#!/usr/bin/env bash
# Runs pretraining on this machine (CPU or one GPU/TPU host).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/local.sh [options] [-- | flags passed to the main ...]

Runs: python -m tokendrop_jax.train --config=CONFIG --workdir=WORKDIR [flags]

Options:
  --config=PATH[:variant]  config file (default: configs/demo.py:loss_ema)
  --workdir=DIR            checkpoints, metrics, plots (default: workdir/<config>)
  --onednn                 CPU only: XLA_FLAGS='--xla_cpu_use_onednn=true
                           --xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce'
                           (~10% faster train step; opt-in: the same flags crashed a
                           forward-only jit once, and slow the first step)
  --devices=N              CPU only: fake N devices (sharding checks)
  --module=NAME            main module (default: tokendrop_jax.train)
  --python=PY              interpreter (default: .venv/bin/python if present)
  --dry-run                print the command and exit (or DRY_RUN=1)
  -h, --help               this help
Any other flag (e.g. --config.train.num_steps=100) is passed to the main.
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG="configs/demo.py:loss_ema"
WORKDIR=""
MODULE="tokendrop_jax.train"
PYTHON_BIN=""
DRY_RUN="${DRY_RUN:-0}"
XLA_EXTRA=()
PASS=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --config=*) CONFIG="${1#*=}" ;;
    --config) CONFIG="$2"; shift ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --workdir) WORKDIR="$2"; shift ;;
    --module=*) MODULE="${1#*=}" ;;
    --python=*) PYTHON_BIN="${1#*=}" ;;
    --onednn) XLA_EXTRA+=(--xla_cpu_use_onednn=true
                          --xla_cpu_experimental_onednn_fusion_type=dot,eltwise,reduce) ;;
    --devices=*) XLA_EXTRA+=("--xla_force_host_platform_device_count=${1#*=}") ;;
    --) shift; PASS+=("$@"); break ;;
    *) PASS+=("$1") ;;
  esac
  shift
done

if [[ -z "$PYTHON_BIN" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON_BIN="$ROOT/.venv/bin/python"
  else PYTHON_BIN="python3"; fi
fi
if [[ -z "$WORKDIR" ]]; then
  name="$(basename "${CONFIG%%:*}" .py)"
  variant="${CONFIG#*:}"; [[ "$variant" == "$CONFIG" ]] && variant="" || variant="_$variant"
  WORKDIR="workdir/${name}${variant}"
fi

ENV=()
if [[ ${#XLA_EXTRA[@]} -gt 0 ]]; then
  ENV=("XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }${XLA_EXTRA[*]}")
fi
CMD=("$PYTHON_BIN" -m "$MODULE" "--config=$CONFIG" "--workdir=$WORKDIR" "${PASS[@]+"${PASS[@]}"}")

if [[ "$DRY_RUN" == 1 ]]; then
  echo "cd $(printf '%q' "$ROOT") &&" "${ENV[@]+$(printf '%q ' "${ENV[@]}")}$(printf '%q ' "${CMD[@]}")"
  exit 0
fi
cd "$ROOT"
exec env "${ENV[@]+"${ENV[@]}"}" "${CMD[@]}"
