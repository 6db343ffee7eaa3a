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

.PHONY: install lock repro test test-install lint bench clean

install: $(STAMP)

# Reinstalled when pyproject.toml or constraints.txt changes or a package's __init__ appears (editable
# installs map the packages that existed at install time). uv installs the ~6 GB of wheels (torch's CUDA
# build, Ray, MLflow, DVC) in ~1 min where pip takes ~3.5 min (BENCHMARKS.md, "End-to-end default run"),
# both from the package registry; constraints.txt pins the versions the test suite passes with.
# --compile-bytecode: as pip does; without .pyc files every new Ray worker process compiles its imports (a CI run
# without it saw Ray Train's first autoscaling request, a 5 s timeout, fail with a traceback on the console).
$(STAMP): pyproject.toml constraints.txt detector/__init__.py pipeline/__init__.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q 'uv>=0.9,<0.14'
	$(BIN)/uv pip install --python $(BIN)/python -q --compile-bytecode -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# constraints.txt re-resolved to the newest versions pyproject.toml allows (then run the tests).
lock: install
	$(BIN)/uv pip compile --python $(BIN)/python -q --upgrade --extra dev -o constraints.txt pyproject.toml

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
