# Set-up and entry points. `make run` trains the quickstart; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= runs/quickstart
# Test processes: each file runs whole in one of them (module fixtures are built once).
TEST_WORKERS ?= 2

.PHONY: run test lint format install install-dev clean

$(VENV)/.stamp-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-base
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.stamp-base

install-dev: $(VENV)/.stamp-dev

run: install
	$(PY) launch/train.py --config=configs/quickstart.py --workdir=$(RUN)

test: install-dev
	$(PY) -m ruff check research launch tests configs
	$(PY) -m ruff format --check research launch tests configs
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20  # slowest: keep in budget

lint: install-dev
	$(PY) -m ruff check research launch tests configs

format: install-dev
	$(PY) -m ruff format research launch tests configs
	$(PY) -m ruff check --fix research launch tests configs

clean:
	rm -rf $(VENV) runs
