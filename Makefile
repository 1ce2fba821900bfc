# Fresh machine: `make train` (main job) and `make test` each create .venv first.
# CPU torch by default (pip install torch==2.13.0). For a GPU, e.g.: make train TORCH=torch
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/main
BUDGET ?= 150
# the main job: in-batch negatives and the recommended cache step (#28) for the same seconds of training
# each, bf16 autocast (native on CPUs with AVX512-BF16 or AMX and on GPUs; slower elsewhere, both alike)
JOB = --data builtin:pycode --time-budget $(BUDGET) --steps 1000000 --schedule constant --warmup 10 \
  --batch-size 32 --lr 1e-4 --query-max-length 32 --target-max-length 64 --seed 42 --bf16
CACHE = --negatives cache --num-negatives 2 --refresh-fraction 0 --write-back train

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
	$(BIN)/negminer train $(JOB) --out $(RUN)/inbatch
	$(BIN)/negminer train $(JOB) $(CACHE) --no-zero-shot --out $(RUN)/cache
	@echo "in-batch (A) against the cache (B), same $(BUDGET) s of training each:"
	$(BIN)/negminer compare $(RUN)/inbatch $(RUN)/cache

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
