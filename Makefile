# `make test` and `make demo` set everything up from a fresh clone and are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

.PHONY: test demo lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch pinned to the CPU build on this machine's disk; the library itself asks for a range.
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev]"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/smoothgrad demo --out smoothgrad-demo

bench: $(STAMP)
	$(BIN)/python benchmarks/cpu.py

clean:
	rm -rf $(VENV) smoothgrad-demo .pytest_cache .mypy_cache .ruff_cache
