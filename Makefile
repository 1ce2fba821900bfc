# Fresh machine: `make train` (main job) and `make test` each create .venv first.
# CPU torch by default (pip install torch==2.13.0). For a GPU, e.g.: make train TORCH=torch
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/main
STEPS ?= 100

.PHONY: train test conformance bench clean-venv

$(BIN)/.stamp: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "negminer needs Python >= 3.10"'
	@$(PYTHON) -m venv $(VENV) || { echo "python venv failed: on Debian/Ubuntu run: apt-get install python3-venv"; exit 1; }
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[test]"
	@touch $@

train: $(BIN)/.stamp
	rm -rf $(RUN)
	$(BIN)/negminer train --data builtin:pycode --out $(RUN) --steps $(STEPS) --batch-size 32 \
	  --lr 1e-4 --query-max-length 32 --target-max-length 64 --seed 42

test: $(BIN)/.stamp
	$(BIN)/python -m pytest -q

# every legal combination of the parts against brute force (~40 min on 2 cores; CI runs the fast tier)
conformance: $(BIN)/.stamp
	$(BIN)/python -m pytest -q -m conformance tests/conformance

bench: $(BIN)/.stamp
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	$(BIN)/python benchmarks/throughput.py

clean-venv:
	rm -rf $(VENV)
