# Everything starts from a machine with only python3 (3.11): the first target that needs the
# environment installs a pinned uv into .tools/ and syncs .venv/ from uv.lock.

PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
SYNCED := $(VENV)/.synced
BIN := $(VENV)/bin
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: help demo test check lint typecheck proto proto-check bench clean

help:
	@echo "make demo    run a 3-jurisdiction federation on this machine (see README.md)"
	@echo "make test    lint, type-check, verify generated code, run the whole test suite"
	@echo "make bench   benchmarks (ingest throughput, aggregation memory); prints numbers"
	@echo "make proto   regenerate jurisfed/wire/v1 from proto/"
	@echo "make clean   remove the environment and outputs"

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(SYNCED): $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen --python $(PYTHON)
	@touch $@

demo: $(SYNCED)
	$(BIN)/jurisfed demo $(DEMO_ARGS)

test: check
	$(BIN)/pytest $(PYTEST_ARGS)

check: lint typecheck proto-check

lint: $(SYNCED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(SYNCED)
	$(BIN)/mypy

proto: $(SYNCED)
	$(BIN)/python proto/generate.py

proto-check: $(SYNCED)
	$(BIN)/python proto/generate.py --check

bench: $(SYNCED)
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) $(TOOLS) demo-out bench-out .pytest_cache .mypy_cache .ruff_cache
