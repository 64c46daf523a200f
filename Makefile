# Two commands a newcomer needs: `make demo` and `make test`.
# Everything else here is what those two need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint unit integration bench clean help

help:
	@echo "make demo   - run two Chainer models as batch transforms on the embedded local stack"
	@echo "make test   - lint, type-check and run the whole test suite"
	@echo "make bench  - run the benchmarks in bench/"

$(STAMP): pyproject.toml
	@command -v java >/dev/null || { echo "multi-model-server needs a Java runtime (17 works): apt-get install -y openjdk-17-jre-headless"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check 'setuptools<74' wheel 'numpy==1.26.4'
	# chainer 7.8.1 is an sdist whose build imports pkg_resources: no build isolation.
	$(BIN)/pip install -q --disable-pip-version-check --no-build-isolation 'chainer==7.8.1'
	$(BIN)/pip install -q --disable-pip-version-check --no-build-isolation -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/smserve demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/python -m pytest -q

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/python bench/serving_overhead.py
	$(BIN)/python bench/transform_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
