# pathgen_batch: the two commands of the README are `make demo` and `make test`.
# Each creates .venv when missing and installs torch first (TORCH_SPEC), then the project.
#
# GPU clusters: TORCH_SPEC='torch==2.13.0' TORCH_INDEX='--index-url https://download.pytorch.org/whl/cu128'
# (any CUDA build whose version satisfies the project's torch range).

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
WORKSPACE   ?= workspace
PYTEST_ARGS ?=

BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SRC    := $(wildcard pathgen_batch tests benchmarks jobs)

.PHONY: venv test test-fast demo lint format clean bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(TORCH_INDEX) '$(TORCH_SPEC)'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

lint: venv
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)
	$(BIN)/mypy

format: venv
	$(BIN)/ruff format $(SRC)
	$(BIN)/ruff check --fix $(SRC)

test: venv lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# the fast tier for the inner loop: unit tests only (no servers, no Ray, no cohort render or
# training beyond a few tiny slides); tiers come from the fixtures a test uses (tests/conftest.py)
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow and not servers and not ray" $(PYTEST_ARGS)

demo: venv
	VENV=$(VENV) scripts/demo.sh $(WORKSPACE)

bench: venv
	$(BIN)/python benchmarks/bench_tiles.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
