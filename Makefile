# Two entry points (see README): `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup demo test lint typecheck unit clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "wsiseg needs Python 3.11, found " + sys.version.split()[0]'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	@touch $@

demo: setup
	$(BIN)/python pipelines/demo.py --out demo-out

lint: setup
	$(BIN)/ruff check wsiseg tests pipelines
	$(BIN)/ruff format --check wsiseg tests pipelines

typecheck: setup
	$(BIN)/mypy

unit: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/pytest

test: lint typecheck unit

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache .ruff_cache
