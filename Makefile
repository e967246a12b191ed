# Two set-up commands: `make workbook` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= default
DATA ?= synthetic
RUN ?= default
STAMP := $(VENV)/.installed
# JupyterLab refuses to start as root unless told to (containers, CI machines)
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: install workbook test lint fmt sync lab clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

workbook: $(STAMP)
	$(PY) -m trashlib run --profile $(PROFILE) --data $(DATA) --name $(RUN)

test: $(STAMP) lint
	$(PY) -m pytest tests
	$(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks

# ruff (lint and format) over the repository, mypy over the package
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# format the code, then write every notebook again from its source in notebooks/src/
fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	$(MAKE) sync

# notebooks/NN_*.ipynb and notebooks/src/NN_*.py are paired (jupytext): the newer side updates the other
sync: $(STAMP)
	cd notebooks && ../$(VENV)/bin/jupytext --sync src/[0-9][0-9]_*.py

lab: $(STAMP)
	cd notebooks && ../$(PY) -m jupyter lab $(ROOT_FLAG)

clean:
	rm -rf runs reports/*/ .pytest_cache
