# ummkd developer commands. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# GPU users: make install TORCH_SPEC="torch==2.13.0" TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
STAMP := $(VENV)/.install-stamp
export WANDB_MODE ?= offline

.DEFAULT_GOAL := help
.PHONY: help install test test-all lint format demo sweep-dry-run bench reproduce

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -e ".[dev,import]"
	touch $(STAMP)

install: $(STAMP) ## Create .venv, install torch (TORCH_SPEC) then ummkd[dev,import] (idempotent)

test: $(STAMP) ## Run the default test suite (not slow, not gpu)
	$(BIN)/python -m pytest -q

test-all: $(STAMP) ## Run all CPU tests, slow ones included
	$(BIN)/python -m pytest -q -m "not gpu"

lint: $(STAMP) ## ruff check + format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP) ## Apply ruff fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

demo: $(STAMP) ## Train + test the method on generated CT/MR phantoms (CPU, a few minutes)
	$(BIN)/ummkd fit --config configs/demo.yaml --data.synthetic.generate=true
	$(BIN)/ummkd test --config configs/demo.yaml --ckpt_path best --verbose false

sweep-dry-run: $(STAMP) ## Render + parse 3 sampled commands of each sweep file (no training)
	for f in configs/sweeps/*.yaml; do $(BIN)/ummkd sweep-dry-run $$f --count 3 || exit 1; done

SEEDS ?= 0
SCALE ?= cpu
FOLDS ?= 5
VARIANTS ?= ummkd separate_norm joint single_mr single_ct
reproduce: $(STAMP) ## Cross-validated comparison on the real abdominal data (FOLDS=5, SEEDS="0", SCALE=cpu|gpu-short|full)
	$(BIN)/ummkd reproduce --scale $(SCALE) --folds $(FOLDS) --seeds $(SEEDS) --variants $(VARIANTS)

# where make bench appends its results; BENCH_DOC= only prints them
BENCH_DOC ?= docs/performance.md
bench: $(STAMP) ## CPU benchmarks (loop overhead, inference speed, loader), appended to docs/performance.md
	$(BIN)/python benchmarks/overhead.py --steps 50 --warmup 10 --repeats 6 $(if $(BENCH_DOC),--append $(BENCH_DOC))
	$(BIN)/python benchmarks/inference_speed.py --root data/abdominal_btcv_chaos $(if $(BENCH_DOC),--append $(BENCH_DOC))
	$(BIN)/python benchmarks/loader_vs_step.py --root data/synthetic --workers 2 $(if $(BENCH_DOC),--append $(BENCH_DOC))
