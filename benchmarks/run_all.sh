#!/usr/bin/env bash
# Every speed benchmark the README quotes, one after the other (run on an otherwise idle machine).
#   bash benchmarks/run_all.sh        (~20 min on 2 CPU cores; needs requirements-dev.txt for the peer)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
R=benchmarks/results
$PY -m tokendrop_jax.benchmark --config=configs/bench_cpu.py --output=$R/step_bench_cpu.json
$PY -m tokendrop_jax.benchmark --config=configs/demo.py --output=$R/step_demo.json
$PY benchmarks/peer_flax_bert.py --config=configs/bench_cpu.py --output=$R/peer_flax_bert.json
$PY benchmarks/loop_overhead.py --config=configs/demo.py --output=$R/loop_overhead.json
$PY benchmarks/speed_sweep.py --output=$R/speed_sweep.json
$PY benchmarks/report.py
