# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# Where torch comes from: pip's configured index by default (PyPI's Linux wheel is the CUDA
# build, gigabytes); TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the CPU wheel.
TORCH_INDEX ?=
# dcmtk and Orthanc are 20-40x slower without TCP_NODELAY (it is read from the environment).
export TCP_NODELAY := 1

.PHONY: setup tools triton test lint typecheck pytest demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned; never let pip choose it.
	$(BIN)/pip install --quiet $(if $(TORCH_INDEX),--index-url "$(TORCH_INDEX)") "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP) tools triton

tools:
	@bash scripts/install-tools.sh

# A real tritonserver for the Triton tests, in its own venv (var/triton-venv; it needs numpy<2).
triton:
	@PYTHON=$(PYTHON) bash scripts/install-triton.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: setup
	$(BIN)/pytest

test: setup lint typecheck pytest

# Builds the demo engines once (minutes; cached in var/engines), then runs the main job.
demo: setup
	$(BIN)/dicom-node engines build --demo --config config.yaml
	$(BIN)/dicom-node demo --config config.yaml

bench: setup
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/inference.py
	$(BIN)/dicom-node engines build --demo --config config.yaml
	$(BIN)/python bench/e2e.py

# Build outputs and caches only: never var/spool (the default spool: received instances,
# the state database, results not yet delivered).
clean:
	rm -rf $(VENV) var/engines var/bench var/demo var/triton-venv .mypy_cache .ruff_cache .pytest_cache
