# pixelrouter: `make demo` serves the demo on http://127.0.0.1:8000, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; on a GPU machine install the torch for your CUDA first
# (e.g. `make install TORCH=torch`), or use your own environment.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install demo serve test test-fast lint format bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[engine,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/pixelrouter serve --demo --host $(HOST) --port $(PORT)

serve: $(STAMP)
	$(BIN)/pixelrouter serve --host $(HOST) --port $(PORT)

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python bench/engine_demo.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info test-artifacts  # never the data: .pixelrouter holds keys and the ledger
