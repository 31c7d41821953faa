# DensePolicy: two commands on a fresh machine.
#   make demo   set-up, then the whole pipeline on the embedded model (CPU, minutes)
#   make test   set-up, then the test suite (fast tests + real vLLM / LLaMA-Factory / TextWorld / Minigrid)
# Set-up is idempotent: a second run only checks stamps.
SHELL := /bin/bash
PY := .venv/bin/python
SERVE ?= cpu
TRAIN ?= cpu
PYTEST_ARGS ?=

.PHONY: help setup setup-slurm lock test test-fast demo experiment bench lint clean warm-start

help:
	@echo "make setup   install venvs from the lock files, tmux, the embedded model, unpack data (idempotent; SERVE=cpu|gpu TRAIN=cpu|gpu)"
	@echo "make lock    recompile the lock files from requirements*.txt (UPGRADE=1: newest versions allowed)"
	@echo "make setup-slurm  slurm-wlm + munge for the Slurm tests (root; run by make test)"
	@echo "make test    setup + setup-slurm + full test suite (PYTEST_ARGS='-k ...' to select)"
	@echo "make test-fast  setup + tests not marked integration"
	@echo "make lint    setup + ruff (rules in pyproject.toml) + the import layering contracts (lint-imports, .importlinter)"
	@echo "make demo    setup + the whole loop on the embedded model (configs/demo.yaml)"
	@echo "make experiment  setup + base vs warm-start vs TreeDPO on held-out tasks (configs/experiment.yaml; ARGS='budget=0.1')"
	@echo "make bench   setup + benchmarks (tables printed, CSVs in benchmarks/results/)"
	@echo "make gpu-check  GPU box: ZeRO-3/LoRA DPO, SFT, vLLM + a small tree in a few minutes (ARGS='--cpu ...')"
	@echo "make warm-start  setup + the warm-started model (expert SFT, cached; ARGS='key=value ...')"

setup:
	SERVE=$(SERVE) TRAIN=$(TRAIN) ./scripts/setup.sh

lock:
	UPGRADE=$(UPGRADE) ./scripts/lock.sh

setup-slurm:
	./scripts/setup_slurm.sh

# As root, setup-slurm has installed Slurm, so a Slurm test that would skip fails instead.
# scripts/run_tests.sh: unit tests on TEST_WORKERS pytest-xdist workers (default 2; tests/conftest.py keeps the
# vLLM files and the Slurm files on one worker each), then integration, slurm and `serial` tests in one process.
# TEST_WORKERS=0: one process throughout; PYTEST_ARGS="tests/unit/x.py -k y": one process over that selection.
TEST_WORKERS ?= 2
export TEST_WORKERS PYTEST_ARGS
test: setup setup-slurm
	$(if $(filter 0,$(shell id -u)),DENSEPOLICY_REQUIRE_SLURM=1 )./scripts/run_tests.sh all

test-fast: setup
	./scripts/run_tests.sh fast

demo: setup
	$(PY) scripts/demo.py

experiment: setup
	$(PY) scripts/experiment.py $(ARGS)

warm-start: setup
	$(PY) scripts/warm_start.py $(ARGS)

bench: setup
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# ruff (rules in pyproject.toml) and lint-imports (the layering contracts in .importlinter) come with
# requirements.txt; an older .venv without them gets a clear message instead of a "command not found".
LINT_TOOLS := .venv/bin/ruff .venv/bin/lint-imports

lint: setup
	@for tool in $(LINT_TOOLS); do [ -x $$tool ] || { echo "make lint: $$tool is missing; rerun make setup" \
	  "(requirements.txt pins ruff==0.17.6 and import-linter==2.17)" >&2; exit 1; }; done
	$(PY) -m compileall -q densepolicy agents envs *.py scripts benchmarks tests
	.venv/bin/ruff check .
	.venv/bin/lint-imports --no-cache --no-logo

clean:
	rm -rf eval_results benchmarks/results .pytest_cache

# No setup dependency: on a GPU box run `make setup SERVE=gpu` first, or point DENSEPOLICY_MAIN_PYTHON at a
# Python with LLaMA-Factory (+ DeepSpeed); the vLLM checks say SKIP when there is no serving venv.
.PHONY: gpu-check
gpu-check:
	$(or $(DENSEPOLICY_MAIN_PYTHON),$(PY)) scripts/gpu_check.py $(ARGS)
