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

# A venv whose interpreter no longer runs (a Python upgrade, a copied or half-deleted .venv)
# is made again: its stamp alone would keep every target failing with "No such file".
ifneq ($(shell $(BIN)/python -c "print('ok')" 2>/dev/null),ok)
$(shell rm -f $(STAMP))
endif

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: $(PYTHON) is older than Python 3.11 (give PYTHON=python3.11)" >&2; exit 1; }
	@# Debian and Ubuntu ship venv's ensurepip in a package of its own (python3-venv).
	@$(PYTHON) -c 'import ensurepip' 2>/dev/null || bash scripts/install-tools.sh --venv "$(PYTHON)"
	@$(BIN)/python -c 'import sys' 2>/dev/null || $(PYTHON) -m venv --clear $(VENV)
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
# It needs the venv only: its PACS stand-in is the node's own, and it sends with pynetdicom
# where dcmtk is missing (the Debian tools and the Triton venv are for the tests).
demo: $(STAMP)
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
