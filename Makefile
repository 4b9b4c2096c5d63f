# The README's two commands are `make serve` and `make test`; .ci/run calls `make test`.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export VENV

.PHONY: install serve test test-fast lint bench-overhead

install:
	bash deploy/install.sh

serve: install
	$(VENV)/bin/babelgate serve

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

lint: install
	$(PY) -m ruff check .

bench-overhead: install
	$(PY) bench/overhead.py
