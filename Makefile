VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: install dev test bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test,bench]"
	touch $@

install: $(VENV)/.installed

# Everything on one machine: embedded Redis, a worker, the ingest, Flower, a local endpoint.
dev: install
	$(VENV)/bin/emailq dev

test: install
	$(VENV)/bin/ruff check producer worker tests benchmarks
	$(VENV)/bin/ruff format --check producer worker tests benchmarks
	$(PY) -m pytest

bench: install
	$(PY) -m benchmarks
