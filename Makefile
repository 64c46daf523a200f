# Two commands a newcomer needs: `make demo` and `make test`.
# Everything else here is what those two need on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo demo-airflow deploy-airflow test test-random lint unit integration bench images clean help

help:
	@echo "make demo   - run the three example models as batch transforms on the embedded local stack"
	@echo "make test   - lint, type-check and run the whole test suite"
	@echo "make bench  - run the benchmarks in bench/"
	@echo "make images - build smserve-cpu and smserve-gpu (bases: SMSERVE_PYTHON_IMAGE, SMSERVE_BUILD_IMAGE, SMSERVE_CUDA_IMAGE)"
	@echo "make test-random - the test suite in a random order (prints the seed)"
	@echo "make demo-airflow - the sync and inference DAGs end to end (dag.test) on the local stack"
	@echo "make deploy-airflow - a real Airflow (PostgreSQL, Celery + SQS broker) on the local stack, until Ctrl-C"

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

demo-airflow: $(STAMP)
	$(BIN)/python -m local_test.airflow_demo

# docs/airflow.md, "First deployment"; ARGS="--executor local --api-port 8791" etc.
deploy-airflow: $(STAMP)
	$(BIN)/python -m local_test.airflow_deploy $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	# the two DAG files are both named dag.py: one mypy pass each
	MYPYPATH=dags $(BIN)/mypy dags/smserve_dags dags/sync/dag.py dags/operators_test tests/dags local_test/airflow_setup.py local_test/airflow_demo.py local_test/airflow_deploy.py local_test/_deploy_procs.py local_test/_deploy_api.py
	MYPYPATH=dags $(BIN)/mypy dags/inference/dag.py

# -rs: say what was skipped and why (the container tests need a Docker engine and the
# base images: see containers/README.md, "Base images").
test: $(STAMP) lint
	$(BIN)/python -m pytest -q -rs

# The serving images; the CLI reads the bases from SMSERVE_PYTHON_IMAGE/... itself.
images: $(STAMP)
	$(BIN)/smserve image build --flavor cpu
	$(BIN)/smserve image build --flavor gpu

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# The whole suite in a random order (modules shuffled, and the tests in each);
# the seed is printed: rerun one order with --random-order-seed=N.
test-random: $(STAMP)
	$(BIN)/python -m pytest --random-order

bench: $(STAMP)
	$(BIN)/python bench/serving_overhead.py
	$(BIN)/python bench/transform_throughput.py
	$(BIN)/python bench/record_outcomes.py
	$(BIN)/python bench/local_transform.py
	$(BIN)/python bench/pipeline_local.py
	$(BIN)/python bench/pipeline.py
	$(BIN)/python bench/pipeline_deployed.py
	$(BIN)/python bench/watch.py
	$(BIN)/python bench/warm_servers.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
