# One-machine entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export SLT_HOME ?= $(CURDIR)/var

.PHONY: install test lint data run clean bench bench-quick prereqs

$(BIN)/python:
	$(PY) -m venv $(VENV)

# torch first, pinned to the CPU wheel, so the project's looser range never pulls a CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# System packages first (scripts/prereqs.sh: apt-get where we are root, else one message naming
# the command), before the venv or anything else: chromium for the tests, wrk for the benchmarks.
prereqs:
	scripts/prereqs.sh test && scripts/prereqs.sh bench

test:
	scripts/prereqs.sh test
	@$(MAKE) --no-print-directory install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check trainer store worker service tests bench

# The demo datasets (real emoji PNGs, via `npm pack`) into $(SLT_HOME)/datasets; idempotent.
data: install
	$(BIN)/python -m trainer.data.demo

# Redis, a worker and the API on http://127.0.0.1:8000, in the foreground; Ctrl-C stops them all.
# A first start queues one demo search per demo dataset (SLT_DEMO=0 to skip). README: "Running".
# The demo base (width 0.25) unless SLT_BASE is set (empty: the paper's width-1 GFMN): a CPU
# searches it in minutes and the shipped demo masks are for it (docs/TIME_TO_QUALITY.md).
run: install data
	SLT_DEMO=$${SLT_DEMO:-1} SLT_BASE=$${SLT_BASE-width=0.25} $(BIN)/python -m service.launcher

# Every benchmark (docs/BENCHMARKS.md and docs/results/bench.json); bench-quick: ~10 min on 2 cores.
bench:
	scripts/prereqs.sh bench
	@$(MAKE) --no-print-directory data
	$(BIN)/python -m bench

bench-quick:
	scripts/prereqs.sh bench
	@$(MAKE) --no-print-directory data
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) var .pytest_cache

# ---- containers (docs/OPERATIONS.md) ------------------------------------------------------
# wheelhouse: every wheel the image needs, built here with this host's pip settings, so
#   `docker build --build-arg WHEELHOUSE=build/wheelhouse` installs with no index at all.
# docker-demo-data: the demo datasets prepared here (npm), to bake into the image.
# docker-base: a local python3.11 base image (debootstrap) where no registry can be reached.
# compose-test: builds and runs the compose stack against the local Docker engine and checks
#   search, generation, crash recovery and persistence (heavy: not part of `make test`).
WHEELHOUSE_DIR ?= build/wheelhouse
DEMO_DATA_HOME ?= build/demo

.PHONY: wheelhouse docker-demo-data docker-base compose-config compose-test

$(WHEELHOUSE_DIR)/.complete: pyproject.toml docker/build-wheelhouse.sh docker/requirements.py docker/wheelhouse_topup.py
	PY=$(PY) docker/build-wheelhouse.sh $(WHEELHOUSE_DIR)
	touch $@

wheelhouse: $(WHEELHOUSE_DIR)/.complete

docker-demo-data: $(STAMP)
	$(BIN)/python -m trainer.data.demo --home $(DEMO_DATA_HOME)

docker-base:
	docker/build-base-image.sh

compose-config:
	@if docker compose version >/dev/null 2>&1; then DC="docker compose"; else DC=docker-compose; fi; \
	$$DC -f docker-compose.yml config -q && $$DC -f docker-compose.yml -f docker-compose.gpu.yml config -q \
	  && echo "compose files valid ($$($$DC version --short 2>/dev/null || $$DC version | head -1))"

compose-test:
	$(PY) tests/compose/drive.py
