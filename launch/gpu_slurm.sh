#!/usr/bin/env bash
# Multi-node / multi-GPU pretraining under Slurm: `sbatch launch/gpu_slurm.sh --config=... --workdir=...`
# (or run it inside an salloc allocation). One process per GPU by default.
#SBATCH --job-name=tokendrop
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: sbatch [sbatch options] launch/gpu_slurm.sh --config=PATH[:variant] --workdir=DIR [options] [flags ...]

Starts, with srun, one process per GPU (--per=gpu, default) or per node
(--per=node), each running
  PYTHON -m tokendrop_jax.train --platform=gpu --config=... --workdir=... [flags]
(--platform=gpu stops a task whose JAX would run on its CPUs) with the variables that tokendrop_jax.training.sharding.maybe_initialize_distributed
reads: JAX_COORDINATOR_ADDRESS (first node, port 12000 + job id % 20000),
JAX_NUM_PROCESSES, JAX_PROCESS_ID (= SLURM_PROCID) and, per GPU,
JAX_LOCAL_DEVICE_IDS (= SLURM_LOCALID).

Options:
  --per=gpu|node      processes per GPU or per node (default: gpu)
  --gpus-per-node=N   GPUs per node when --per=gpu (default: SLURM_GPUS_ON_NODE or 8)
  --repo-dir=DIR      repository (default: the one holding this script, or SLURM_SUBMIT_DIR)
  --python=PY         interpreter (default: REPO/.venv/bin/python)
  --module=NAME       main module (default: tokendrop_jax.train)
  --port=P            coordinator port
  --install           first run `make install ACCEL=cuda` in the repository (jaxlib's CUDA
                      plugin; the repository must be on a file system all nodes share)
  --dry-run           print the srun command and exit (or DRY_RUN=1)
  -h, --help          this help
Any other flag (e.g. --config.train.num_steps=1000) is passed to the main. The
workdir must be on a file system that all nodes share.
EOF
}

# sbatch copies the script, so BASH_SOURCE may not point into the repository.
REPO_DIR="${REPO_DIR:-}"
PER="gpu"
GPUS_PER_NODE="${SLURM_GPUS_ON_NODE:-8}"
PYTHON_BIN=""
MODULE="tokendrop_jax.train"
CONFIG=""
WORKDIR=""
PORT=""
DRY_RUN="${DRY_RUN:-0}"
INSTALL=0
PASS=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --per=*) PER="${1#*=}" ;;
    --gpus-per-node=*) GPUS_PER_NODE="${1#*=}" ;;
    --repo-dir=*) REPO_DIR="${1#*=}" ;;
    --python=*) PYTHON_BIN="${1#*=}" ;;
    --module=*) MODULE="${1#*=}" ;;
    --port=*) PORT="${1#*=}" ;;
    --install) INSTALL=1 ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --) shift; PASS+=("$@"); break ;;
    *) PASS+=("$1") ;;
  esac
  shift
done

missing=()
[[ -z "$CONFIG" ]] && missing+=("--config")
[[ -z "$WORKDIR" ]] && missing+=("--workdir")
[[ "$PER" != gpu && "$PER" != node ]] && missing+=("--per=gpu|node (got '$PER')")
if [[ ${#missing[@]} -gt 0 ]]; then
  echo "gpu_slurm.sh: missing or bad ${missing[*]}; see --help." >&2
  exit 2
fi

if [[ -z "$REPO_DIR" ]]; then
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [[ -f "$here/tokendrop_jax/__init__.py" ]]; then REPO_DIR="$here"
  else REPO_DIR="${SLURM_SUBMIT_DIR:-$PWD}"; fi
fi
PYTHON_BIN="${PYTHON_BIN:-$REPO_DIR/.venv/bin/python}"

NODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
if [[ "$PER" == gpu ]]; then TASKS_PER_NODE="$GPUS_PER_NODE"; else TASKS_PER_NODE=1; fi
NUM_PROCESSES=$(( NODES * TASKS_PER_NODE ))
if [[ -n "${SLURM_JOB_NODELIST:-}" ]] && command -v scontrol >/dev/null; then
  HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
else
  HEAD_NODE="${HEAD_NODE:-localhost}"
fi
PORT="${PORT:-$(( 12000 + ${SLURM_JOB_ID:-0} % 20000 ))}"

PLATFORM=()
[[ "$MODULE" == tokendrop_jax.train || "$MODULE" == tokendrop_jax.finetune ]] && PLATFORM=(--platform=gpu)
MAIN="$(printf '%q ' "$PYTHON_BIN" -m "$MODULE" "${PLATFORM[@]+"${PLATFORM[@]}"}" "--config=$CONFIG" "--workdir=$WORKDIR" \
  "${PASS[@]+"${PASS[@]}"}")"
# Per-task variables are expanded by the task's shell, not here.
TASK_ENV='export JAX_PROCESS_ID=$SLURM_PROCID;'
[[ "$PER" == gpu ]] && TASK_ENV+=' export JAX_LOCAL_DEVICE_IDS=$SLURM_LOCALID;'
TASK="cd $(printf '%q' "$REPO_DIR") && $TASK_ENV exec ${MAIN% }"

ENV=("JAX_COORDINATOR_ADDRESS=$HEAD_NODE:$PORT" "JAX_NUM_PROCESSES=$NUM_PROCESSES")
CMD=(srun "--nodes=$NODES" "--ntasks=$NUM_PROCESSES" "--ntasks-per-node=$TASKS_PER_NODE"
     --kill-on-bad-exit=1 bash -c "$TASK")

INSTALL_CMD=(make -C "$REPO_DIR" install ACCEL=cuda)
if [[ "$DRY_RUN" == 1 ]]; then
  [[ "$INSTALL" == 1 ]] && echo "$(printf '%q ' "${INSTALL_CMD[@]}")"
  echo "$(printf '%q ' "${ENV[@]}")$(printf '%q ' "${CMD[@]}")"
  exit 0
fi
[[ "$INSTALL" == 1 ]] && "${INSTALL_CMD[@]}"
export "${ENV[@]}"
exec "${CMD[@]}"
