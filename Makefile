# One command installs everything; `make test` and `make demo` install first if needed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
WORKDIR ?= workdir/demo
# The accelerator to install for: cpu (default), tpu (libtpu) or cuda (NVIDIA CUDA 12 plugin).
ACCEL ?= cpu
ifeq ($(filter $(ACCEL),cpu tpu cuda),)
$(error ACCEL=$(ACCEL): use cpu, tpu or cuda)
endif

.PHONY: install install-dev test test-slow demo bench check-extras clean

install: $(STAMP)
ifneq ($(ACCEL),cpu)
install: $(VENV)/.installed-$(ACCEL)
endif

# An accelerator's extra on top of the core install (requirements-tpu.txt, requirements-cuda.txt).
$(VENV)/.installed-%: $(STAMP) requirements-%.txt
	$(PY) -m pip install --quiet -r requirements-$*.txt
	touch $@

# Test extras (transformers + CPU torch) for the Hugging Face export round trip, and the TPU
# extra: the tests compile for TPU slices with the TPU compiler (no TPU needed).
install-dev: $(DEV_STAMP)

$(DEV_STAMP): $(STAMP) $(VENV)/.installed-tpu requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(DEV_STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# Test files are spread over TEST_WORKERS processes (pytest-xdist), each file whole in one
# worker so that its module fixtures are built once.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile
# Most of the suite's time is XLA compiling the same tiny programs in many processes (every
# train main a test starts compiles its steps again): one persistent compilation cache,
# shared by the workers and the processes they start, new for each suite and removed after
# it (a bad or half-written entry is only a recompile).
cached = cache=$$(mktemp -d) && JAX_COMPILATION_CACHE_DIR=$$cache \
	JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 \
	$(1) ; rc=$$?; rm -rf $$cache; exit $$rc

test: install-dev
	$(call cached,$(PYTEST) tests)

test-slow: install-dev
	$(call cached,$(PYTEST) -m slow tests)

demo: install
	$(PY) -m tokendrop_jax.train --config=configs/demo.py --workdir=$(WORKDIR)

bench: install
	$(PY) -m tokendrop_jax.benchmark --config=configs/bench_cpu.py --output=benchmarks/results/step_bench_cpu.json

# Each accelerator extra resolves with the core pins (pip resolves, installs nothing).
check-extras: $(STAMP)
	$(PY) -m pip install --quiet --dry-run --ignore-installed -r requirements-tpu.txt
	$(PY) -m pip install --quiet --dry-run --ignore-installed -r requirements-cuda.txt

clean:
	rm -rf $(VENV) *.egg-info
