# Set-up and entry points. `make run` trains the quickstart; `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
RUN ?= runs/quickstart
# Test processes: each file runs whole in one of them (module fixtures are built once).
TEST_WORKERS ?= 2
# test-py312: the newest JAX that pip picks for Python 3.12, in its own venv, on a fast subset.
# CI machines may have 3.12 only under pyenv, whose python3.12 shim on PATH fails unless 3.12 is
# pyenv's selected version: take the first candidate that runs.
PYTHON312 ?= $(shell for p in python3.12 $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.12*/bin/python3.12; \
	do "$$p" -c '' 2>/dev/null && { command -v "$$p"; break; }; done)
VENV312 ?= .venv312
PY312 := $(VENV312)/bin/python
TESTS312 ?= tests/test_config.py tests/test_loop.py tests/test_parallel.py tests/test_checkpoint.py \
	tests/test_optim.py

.PHONY: run test test-py312 test-cluster lint format install install-dev clean

$(VENV)/.stamp-base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-base
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

$(VENV312)/.stamp-dev: pyproject.toml
	@test -n "$(PYTHON312)" || { echo "test-py312: no python3.12 on PATH or under pyenv;" \
		"install Python 3.12 or pass PYTHON312=/path/to/python3.12" >&2; exit 1; }
	test -x $(PY312) || $(PYTHON312) -m venv $(VENV312)
	$(PY312) -m pip install --quiet --upgrade pip
	$(PY312) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.stamp-base

install-dev: $(VENV)/.stamp-dev

run: install
	$(PY) launch/train.py --config=configs/quickstart.py --workdir=$(RUN)

test: install-dev
	$(PY) -m ruff check research launch tests configs
	$(PY) -m ruff format --check research launch tests configs
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20  # slowest: keep in budget

# The SLURM tests: need the local cluster (sudo launch/slurm/local_cluster.sh up); serial, since
# the cluster's jobs need the cores.
test-cluster: install-dev
	$(PY) -m pytest -q -m cluster tests/cluster

test-py312: $(VENV312)/.stamp-dev
	$(PY312) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(TESTS312)

lint: install-dev
	$(PY) -m ruff check research launch tests configs

format: install-dev
	$(PY) -m ruff format research launch tests configs
	$(PY) -m ruff check --fix research launch tests configs

clean:
	rm -rf $(VENV) $(VENV312) runs
