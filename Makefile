# The README's two commands are `make run` and `make test`; .ci/run calls `make test`.
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
export VENV

.PHONY: install install-test run test test-fast lint bench-overhead bench-serving bench-benign \
	bench-fleet bench-soak

install:
	bash deploy/install.sh

# The tests also need Debian's postgresql and prometheus (installed when absent).
install-test:
	bash deploy/install.sh --test-tools

# The main job: serve the default embedded model behind the guard with its shipped calibration.
run: install
	$(VENV)/bin/babelgate serve

test: install-test
	$(PY) -m ruff check .
	$(PY) -m pytest

test-fast: install-test
	$(PY) -m pytest -m "not slow"

lint: install
	$(PY) -m ruff check .

bench-overhead: install
	$(PY) bench/overhead.py

bench-serving: install
	$(PY) bench/serving.py

bench-benign: install
	$(PY) bench/benign_flagged.py

bench-fleet: install-test
	$(PY) bench/fleet.py

# openai and psutil come with the test tools. MINUTES=1 for a short run.
MINUTES ?= 10
bench-soak: install-test
	$(PY) bench/soak.py --minutes $(MINUTES)
