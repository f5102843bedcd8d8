# Quick start: `make demo` and `make test`. Both create the virtual environment .venv when it is
# missing and install batchnorm into it (editable), always through requirements/constraints.txt:
# an unpinned torch would resolve to a CUDA build of several GB.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/constraints.txt
# Extras installed for each stamp $(VENV)/.installed-<name>.
EXTRAS_demo := demo
EXTRAS_test := test,dev

.PHONY: help demo test

help:
	@echo "make demo   train small networks on bundled digits with and without batch norm"
	@echo "make test   ruff check, ruff format --check, then pytest (doctests included)"
	@echo "Both create $(VENV) with $(PYTHON) (3.10 or newer) when it is missing."

demo: $(VENV)/.installed-demo
	$(BIN)/python -m batchnorm demo

test: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest

$(BIN)/python:
	@if ! $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then \
	  found=$$(command -v $(PYTHON) >/dev/null && $(PYTHON) --version 2>&1 || echo "not found"); \
	  echo "make: batchnorm needs Python 3.10 or newer; $(PYTHON): $$found." \
	    "Choose another interpreter, e.g. make PYTHON=python3.11 test" >&2; \
	  exit 1; \
	fi
	$(PYTHON) -m venv $(VENV)

# The stamp is newer than pyproject.toml and the constraints file once their contents are
# installed, so an unchanged setup skips pip entirely.
$(VENV)/.installed-%: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[$(EXTRAS_$*)]'
	@touch $@
