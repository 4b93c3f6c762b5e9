# The start of the OUTDIR wrappers (accelerator.sh, quality_gpu.sh), sourced with their
# arguments and USAGE_LINES (the lines of the caller's header that say how to call it):
# without an OUTDIR, prints those lines and exits 2; else sets OUT, goes to the repository
# root, makes OUT there, and sets PY ($PYTHON, else .venv/bin/python, else python3).
if [[ $# -lt 1 || "$1" == -* ]]; then
  sed -n "${USAGE_LINES}p" "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
OUT="$1"
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}"
mkdir -p "$OUT"
