# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: run test bench install install-test clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed plugins/digits-dicom/pyproject.toml plugins/digits-mask-outline/pyproject.toml
	$(PIP) install -q -e '.[test]'
	# The two plugins shipped as separate packages (README "Plugins"); the tests use them.
	$(PIP) install -q -e plugins/digits-dicom -e plugins/digits-mask-outline
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## Install and run everything: web on :8000, one worker per GPU (or a CPU worker), Redis if needed.
run: install
	$(PY) manage.py serve

## The whole test suite against Postgres (DATABASE_URL) and Redis (REDIS_URL).
test: install-test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/mypy
	$(PY) manage.py spectacular --validate --fail-on-warn --file /dev/null
	$(PY) -m pytest $(PYTEST_ARGS)

## Benchmarks: dataset ingestion, training throughput and the scheduler (ratios against baselines measured in the same run).
bench: install
	$(PY) -m bench.dataset_build
	$(PY) -m bench.training
	$(PY) -m bench.tasks
	$(PY) -m bench.scheduler
	$(PY) -m bench.fairshare
	$(PY) -m bench.preemption
	$(PY) -m bench.startup
	$(PY) -m bench.lists
	$(PY) -m bench.memory
	$(PY) -m bench.inference
	$(PY) -m bench.scale
	$(PY) -m bench.live_latency

clean:
	rm -rf $(VENV) .pytest_cache
