#!/usr/bin/env bash
# Runs pretraining on every worker of an existing Cloud TPU VM (pod slice).
# Creates no VM: the TPU VM and the repository must exist on all workers; --install
# installs the TPU build (make install ACCEL=tpu) on every worker first.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --tpu=NAME --zone=ZONE --config=PATH[:variant] --workdir=DIR [options] [flags ...]

Runs on all workers, through
  gcloud compute tpus tpu-vm ssh NAME --zone=ZONE [--project=P] --worker=all --command="..."
the command
  cd REPO_DIR && [make install ACCEL=tpu &&] TOKENDROP_DISTRIBUTED=1 \
    PYTHON -m tokendrop_jax.train --platform=tpu --config=... --workdir=... [flags]
(TOKENDROP_DISTRIBUTED=1 makes the main call jax.distributed.initialize();
--platform=tpu stops a worker whose JAX would run on its host CPUs).

Options (or environment variables):
  --tpu=NAME        TPU_NAME   TPU VM name (required)
  --zone=ZONE       ZONE       e.g. us-central2-b (required)
  --project=P       PROJECT    GCP project (default: gcloud's)
  --repo-dir=DIR    REPO_DIR   repository on the workers (default: ~/tokendrop_jax)
  --python=PY       REMOTE_PYTHON  interpreter on the workers (default: .venv/bin/python)
  --config=...      config file on the workers (required)
  --workdir=DIR     shared by all workers: a gs:// bucket or a shared mount (required)
  --module=NAME     main module (default: tokendrop_jax.train)
  --install         first run `make install ACCEL=tpu` on every worker (jaxlib + libtpu)
  --check-fit=SLICE first compile the config for SLICE (e.g. v4-32) here, with
                    python -m tokendrop_jax.compile, and stop if a step does not fit
                    (needs libtpu here: make install ACCEL=tpu; minutes for bert_base)
  --dry-run         print the gcloud command and exit (or DRY_RUN=1)
  -h, --help        this help
Any other flag (e.g. --config.train.num_steps=1000) is passed to the main.
EOF
}

TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-}"
REPO_DIR="${REPO_DIR:-~/tokendrop_jax}"
REMOTE_PYTHON="${REMOTE_PYTHON:-.venv/bin/python}"
MODULE="tokendrop_jax.train"
CONFIG=""
WORKDIR=""
DRY_RUN="${DRY_RUN:-0}"
INSTALL=0
CHECK_FIT=""
PASS=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --tpu=*) TPU_NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --repo-dir=*) REPO_DIR="${1#*=}" ;;
    --python=*) REMOTE_PYTHON="${1#*=}" ;;
    --module=*) MODULE="${1#*=}" ;;
    --install) INSTALL=1 ;;
    --check-fit=*) CHECK_FIT="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --) shift; PASS+=("$@"); break ;;
    *) PASS+=("$1") ;;
  esac
  shift
done

missing=()
[[ -z "$TPU_NAME" ]] && missing+=("--tpu (TPU_NAME)")
[[ -z "$ZONE" ]] && missing+=("--zone (ZONE)")
[[ -z "$CONFIG" ]] && missing+=("--config")
[[ -z "$WORKDIR" ]] && missing+=("--workdir")
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "tpu_pod.sh: missing ${missing[*]}; see --help." >&2
  exit 2
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "$CHECK_FIT" ]]; then
  FIT=("${LOCAL_PYTHON:-$HERE/.venv/bin/python}" -m tokendrop_jax.compile "--config=$CONFIG"
       "--topology=$CHECK_FIT" "${PASS[@]+"${PASS[@]}"}")
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "(cd $(printf '%q' "$HERE") && $(printf '%q ' "${FIT[@]}"))"
  else
    (cd "$HERE" && "${FIT[@]}") || { echo "tpu_pod.sh: --check-fit=$CHECK_FIT failed; not launched." >&2; exit 1; }
  fi
fi

# The training mains refuse to run on anything but a TPU (see tokendrop_jax/accelerator.py).
PLATFORM=()
[[ "$MODULE" == tokendrop_jax.train || "$MODULE" == tokendrop_jax.finetune ]] && PLATFORM=(--platform=tpu)
PREFIX=""
[[ "$INSTALL" == 1 ]] && PREFIX="make install ACCEL=tpu && "
# REPO_DIR may start with ~ (expanded on the worker), so it is not quoted.
REMOTE="cd ${REPO_DIR} && ${PREFIX}TOKENDROP_DISTRIBUTED=1 $(printf '%q ' "$REMOTE_PYTHON" -m "$MODULE" \
  "${PLATFORM[@]+"${PLATFORM[@]}"}" "--config=$CONFIG" "--workdir=$WORKDIR" "${PASS[@]+"${PASS[@]}"}")"
REMOTE="${REMOTE% }"
CMD=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "--zone=$ZONE")
[[ -n "$PROJECT" ]] && CMD+=("--project=$PROJECT")
CMD+=(--worker=all "--command=$REMOTE")

if [[ "$DRY_RUN" == 1 ]]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
exec "${CMD[@]}"
