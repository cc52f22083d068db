# pathgen_batch: the two commands of the README are `make demo` and `make test`.
# Each creates .venv when missing and installs torch first (TORCH_SPEC), then the project.
#
# GPU clusters: TORCH_SPEC='torch==2.13.0' TORCH_INDEX='--index-url https://download.pytorch.org/whl/cu128'
# (any CUDA build whose version satisfies the project's torch range).

# Foundation-model encoders (features/timm_encoder.py) need timm, and timm imports torchvision.
# PyPI's torchvision wheels are CUDA builds whose compiled ops do not load beside the CPU torch
# wheel; torchvision 0.16.2 is one whose Python part still imports without them (timm needs
# only that part to build networks). It and timm are installed with --no-deps so that their
# pins never replace the torch installed first. With a CUDA TORCH_INDEX, set TORCHVISION_SPEC
# to the torchvision that index builds for the chosen torch.
# The tested timm range is timm>=0.9.16,<2 (0.9.16, 1.0.3, 1.0.31); timm's other requirements
# are the project's 'encoders' extra.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
TORCHVISION_SPEC ?= torchvision==0.16.2
TIMM_SPEC   ?= timm>=0.9.16,<2
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
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,encoders,cluster]'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps $(TORCH_INDEX) '$(TORCHVISION_SPEC)'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps '$(TIMM_SPEC)'
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
	$(BIN)/python benchmarks/bench_encoders.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
