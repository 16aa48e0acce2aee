# OmniScore — every target is listed by `make help`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export OMNISCORE_HOME ?= $(CURDIR)/data
# Optional extras to install with the lock file, e.g. `make install EXTRAS=spark` (.ci/run does).
EXTRAS ?=

.DEFAULT_GOAL := help
.PHONY: help install demo test test-fast lint format bench clean

help: ## List every target with what it does
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

# Bytecode is compiled at install, at both levels: plain for the CLI and the tests, optimized
# for the server (it runs under -O, docs/serving.md). Where PYTHONDONTWRITEBYTECODE is set, as on
# this machine, nothing else would write it, and every process would compile Feast, MLflow and
# LightGBM from source again (3 s of each command's start; `make test` 642 s against 466 s).
$(BIN)/omniscore: pyproject.toml uv.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "uv>=0.5"
	$(BIN)/uv sync --frozen --compile-bytecode --python $(BIN)/python $(addprefix --extra ,$(EXTRAS))
	$(BIN)/python -O -m compileall -q -j 0 $(VENV)/lib > /dev/null
	@touch $@

install: $(BIN)/omniscore ## Create .venv from the lock file (uv sync --frozen)

demo: install ## Run the main job on the embedded stores: generate → features → train → promote → serve
	$(BIN)/omniscore demo

# Tests train on tiny data, where one LightGBM thread beats two contending for 2 cores.
# Two pytest-xdist workers, one per core, each taking whole modules (their module fixtures
# start servers and train once); the session's world is built once for both (conftest.py).
# Tiers (tests/conftest.py): unit, integration (real Feast, MLflow, HTTP), slow (trains or
# runs a whole command). The slowest tests are listed after each run.
TEST_WORKERS ?= 2
PYTEST := OMNISCORE_LGBM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
	--no-loadscope-reorder
# OmniScore's own modules, compiled once rather than in every process the tests start.
SOURCES := data_layer feature_repo training serving omniscore benchmarks
COMPILE := $(BIN)/python -m compileall -q $(SOURCES) && $(BIN)/python -O -m compileall -q $(SOURCES)

test: install ## Run the whole test suite (what .ci/run calls)
	@$(COMPILE) > /dev/null
	$(PYTEST) --durations=15

test-fast: install ## Run the unit and integration tests, without the slow ones (no training)
	@$(COMPILE) > /dev/null
	$(PYTEST) -m "not slow" --durations=10

lint: install ## Check lint and formatting with ruff
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install ## Fix lint and formatting with ruff
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

bench: install ## Run the benchmarks and write docs/benchmarks.md
	$(BIN)/python -m benchmarks.run

clean: ## Remove .venv and the default $OMNISCORE_HOME (./data)
	rm -rf $(VENV) data
