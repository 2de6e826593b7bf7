# `make test` and `make demo` set everything up from a fresh clone and are idempotent.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check -q

CHROMIUM ?= /usr/bin/chromium

.PHONY: test demo lint bench clean browser docs

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch pinned to the CPU build on this machine's disk; the library itself asks for a range.
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev]"
	# Quantus for the metric parity tests: --no-deps, its real needs are in the dev extra
	# (its metadata pulls the GUI opencv-python; torch is not touched).
	$(PIP) install --no-deps "quantus==0.6.0"
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check
	$(BIN)/mypy

# The browser tests drive Debian's chromium (Playwright's own browser download is not used).
browser:
	test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: lint browser
	$(BIN)/pytest

# Re-run the tutorial notebook and the page screenshot, and write them into docs/.
docs: $(STAMP) browser
	SMOOTHGRAD_UPDATE_DOCS=1 $(BIN)/pytest -q tests/test_notebook.py tests/test_web.py

demo: $(STAMP)
	$(BIN)/smoothgrad demo --out smoothgrad-demo

bench: $(STAMP)
	$(BIN)/python benchmarks/cpu.py

clean:
	rm -rf $(VENV) smoothgrad-demo .pytest_cache .mypy_cache .ruff_cache
