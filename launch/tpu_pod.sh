#!/usr/bin/env bash
# Runs pretraining on every worker of an existing Cloud TPU VM (pod slice).
# Creates nothing: the TPU VM, the repository and its .venv must exist on all
# workers (e.g. `gcloud ... ssh --worker=all --command="git clone ... && make install"`).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --tpu=NAME --zone=ZONE --config=PATH[:variant] --workdir=DIR [options] [flags ...]

Runs on all workers, through
  gcloud compute tpus tpu-vm ssh NAME --zone=ZONE [--project=P] --worker=all --command="..."
the command
  cd REPO_DIR && TOKENDROP_DISTRIBUTED=1 PYTHON -m tokendrop_jax.train --config=... --workdir=... [flags]
(TOKENDROP_DISTRIBUTED=1 makes the main call jax.distributed.initialize()).

Options (or environment variables):
  --tpu=NAME        TPU_NAME   TPU VM name (required)
  --zone=ZONE       ZONE       e.g. us-central2-b (required)
  --project=P       PROJECT    GCP project (default: gcloud's)
  --repo-dir=DIR    REPO_DIR   repository on the workers (default: ~/tokendrop_jax)
  --python=PY       REMOTE_PYTHON  interpreter on the workers (default: .venv/bin/python)
  --config=...      config file on the workers (required)
  --workdir=DIR     shared by all workers: a gs:// bucket or a shared mount (required)
  --module=NAME     main module (default: tokendrop_jax.train)
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

# REPO_DIR may start with ~ (expanded on the worker), so it is not quoted.
REMOTE="cd ${REPO_DIR} && TOKENDROP_DISTRIBUTED=1 $(printf '%q ' "$REMOTE_PYTHON" -m "$MODULE" \
  "--config=$CONFIG" "--workdir=$WORKDIR" "${PASS[@]+"${PASS[@]}"}")"
REMOTE="${REMOTE% }"
CMD=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "--zone=$ZONE")
[[ -n "$PROJECT" ]] && CMD+=("--project=$PROJECT")
CMD+=(--worker=all "--command=$REMOTE")

if [[ "$DRY_RUN" == 1 ]]; then
  printf '%q ' "${CMD[@]}"; echo
  exit 0
fi
exec "${CMD[@]}"
