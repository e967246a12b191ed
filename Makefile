# Two set-up commands: `make workbook` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= default
DATA ?= synthetic
RUN ?= default
STAMP := $(VENV)/.installed

.PHONY: install workbook test lab clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

workbook: $(STAMP)
	$(PY) -m trashlib run --profile $(PROFILE) --data $(DATA) --name $(RUN)

test: $(STAMP)
	$(PY) -m pytest tests
	$(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks

lab: $(STAMP)
	cd notebooks && ../$(PY) -m jupyter lab

clean:
	rm -rf runs reports/*/ .pytest_cache
