# make serve   - install if needed, then serve configs/cpu.yaml on http://127.0.0.1:8000
# make test    - install if needed, then run the whole test suite
# make install - create .venv and install the package with its test extras
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/cpu.yaml
STAMP := $(VENV)/.installed

.PHONY: install serve test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

install: $(STAMP)

serve: install
	$(PY) -m serve_app serve --config $(CONFIG)

test: install
	$(PY) -m pytest
