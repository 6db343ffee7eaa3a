# `make repro`: set up .venv (if needed) and run the whole DVC pipeline on params.yaml.
# `make test`:  set up .venv (if needed), lint with ruff, run the test suite.
# `make test-install`: the served model's install into a fresh virtual environment (CI runs it too).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# DVC stage commands say `python -m pipeline ...`: make that the venv's python.
export PATH := $(abspath $(BIN)):$(PATH)
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export RAY_TRAIN_ENABLE_PRINT_PATCH := 0

.PHONY: install repro test test-install lint bench clean

install: $(STAMP)

# Reinstalled when pyproject.toml changes or a package's __init__ appears (editable installs
# map the packages that existed at install time). pip shows setuptools' informational
# "Editable installation." banner as a warning even with -q; it is about setuptools, not this
# project, so only that message is filtered (real warnings and errors still show).
$(STAMP): pyproject.toml detector/__init__.py pipeline/__init__.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

repro: install
	$(BIN)/dvc repro

lint: install
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest

# The served model installed from its logged requirements alone into a fresh venv (~2 min, ~6 GB of
# disk; pip needs the package registry). Not in `make test`; CI (.ci/run) runs it after the suite.
test-install: install
	$(BIN)/python -m pytest -m install

bench: install
	$(BIN)/python benchmarks/bench_detector.py

clean:
	rm -rf data/prepared models reports dvclive mlruns mlflow.db ray_results
