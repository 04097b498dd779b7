# Set-up and entry points. `make run` trains the quickstart; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= runs/quickstart

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
	$(PY) -m pytest -q --durations=20  # the slowest tests, to keep the suite within budget

lint: install-dev
	$(PY) -m ruff check research launch tests configs

format: install-dev
	$(PY) -m ruff format research launch tests configs
	$(PY) -m ruff check --fix research launch tests configs

clean:
	rm -rf $(VENV) runs
