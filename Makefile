# One command installs everything; `make test` and `make demo` install first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
WORKDIR ?= workdir/demo

.PHONY: install install-dev test test-slow demo bench clean

install: $(STAMP)

# Test extras (transformers + CPU torch) for the Hugging Face export round trip.
install-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP) requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(DEV_STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

test: install-dev
	$(PY) -m pytest -q tests

test-slow: install-dev
	$(PY) -m pytest -q -m slow tests

demo: install
	$(PY) -m tokendrop_jax.train --config=configs/demo.py --workdir=$(WORKDIR)

bench: install
	$(PY) -m tokendrop_jax.benchmark --config=configs/bench_cpu.py --output=benchmarks/results/step_bench_cpu.json

clean:
	rm -rf $(VENV) *.egg-info
