VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python

.PHONY: install dev test typecheck bench

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
	# The dead letters page is tested in headless Chromium: Debian's, never Playwright's download.
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(VENV)/bin/ruff check producer worker tests benchmarks
	$(VENV)/bin/ruff format --check producer worker tests benchmarks
	$(MAKE) --no-print-directory typecheck
	# The fast tier first (in-process, seconds): a broken unit fails before minutes of real processes.
	$(PY) -m pytest tests/unit
	$(PY) -m pytest --ignore=tests/unit

typecheck: install
	$(VENV)/bin/mypy

bench: install
	$(PY) -m benchmarks
