# taidtron: `make install` then `make test`. Everything lives in $(VENV), made here.
# PYTHON picks the interpreter and with it megatron-core (pyproject.toml pins one per Python): python3.11 gets
# 0.16.1, python3.12 gets 0.19.2, e.g. `make install PYTHON=python3.12 VENV=.venv312` (docs/megatron_core.md; with
# pyenv's shims prefix PYENV_VERSION=3.12).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch for machines without CUDA torch: the CPU wheel on Python 3.11 (a plain `pip install torch` would pull a
# multi-GB CUDA build). PyPI has no CPU wheel of torch for Python 3.12, so there this is the CUDA build (4 GB).
CPU_TORCH ?= torch==2.13.0

.PHONY: install lint test test-core test-triton smoke-test slurm-test multinode-test bench bench-step gpu-check paper-mini \
	paper-mini-quick check clean help

help:
	@echo "make install     create $(VENV) with taidtron and its dependencies (CPU torch unless CUDA torch exists)"
	@echo "make lint        ruff: lint rules and the formatter check (configured in pyproject.toml)"
	@echo "make check       make lint, then make test (what CI runs first)"
	@echo "make test        run the CPU test suite (single- and multi-process, gloo), without the Triton kernel tests"
	@echo "make test-core   the core of the suite (CI runs it on Python 3.12 / megatron-core 0.19.2: VENV=.venv312)"
	@echo "make test-triton install the triton extra if missing, run the Triton kernel tests in its CPU interpreter"
	@echo "make smoke-test  train a tiny teacher, then distil it into a student with TAID (GPU if present, else CPU)"
	@echo "make slurm-test  start a local SLURM cluster and run the smoke sbatch plus a preemption/resume test"
	@echo "make multinode-test  two nodes in network namespaces: 2-node sbatch, preemption, a lost node, torchrun, deepspeed"
	@echo "make bench       time the fused TAID loss against the reference formula"
	@echo "make bench-step  time a distillation step against a student step plus a teacher forward (docs/performance.md)"
	@echo "make gpu-check   on a machine with an NVIDIA GPU: every GPU check in one call of <= 7 min -> runs/gpu_check/report/"
	@echo "make paper-mini  a pretrained student distilled by TAID and the baselines from 2 teachers, and a domain"
	@echo "                 transfer, 3 replicates, on the Python docs (~100 min on 2 cores) -> docs/results/paper_mini.md;"
	@echo "                 ARGS=... passes options (e.g. ARGS=--report-only)"
	@echo "make paper-mini-quick  the same pipeline in a few minutes (a check, not a result) -> runs/paper_mini_quick/"

install:
	@if $(PYTHON) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then \
		echo "CUDA torch found in $(PYTHON): keeping it (venv sees system site-packages)"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q "$(CPU_TORCH)"; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@$(PY) -c "import sys, torch, importlib.metadata as m; print('taidtron installed: Python', sys.version.split()[0], \
		'torch', torch.__version__, 'megatron-core', m.version('megatron-core'))"

# The Triton kernel tests need the ~700 MB triton wheel and its interpreter: `make test-triton` runs them.
# Two pytest workers (pytest-xdist, a test file per worker at a time) keep both cores busy: many tests run one
# single-threaded child process, and with one worker the second core sat idle (1.2 cores busy on average). Tests that assert how fast processes
# start or stop (marker serial) run afterwards, alone. TEST_WORKERS=1 runs everything in one process.
# The slowest directories are named first so that their files start early and the two workers finish together
# (tests/results holds the longest file: the quick experiment, run twice, ~5 min).
TEST_WORKERS ?= 2
TEST_MARKERS := not triton and not gpu
test:
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests/results tests/train tests/checkpoint tests/hf tests \
		-m "$(TEST_MARKERS) and not serial"
	$(PY) -m pytest -q tests -m "$(TEST_MARKERS) and serial"
	@echo "Deselected above: Triton kernel tests (marker triton: make test-triton) and GPU tests (marker gpu: make gpu-check)"

# The core of the suite: the overrides (megatron-core version guard, pipeline p2p), parallel equivalence, exact
# resume, divergence and resume at another lr, the HF round trip, the smoke test in miniature and its golden loss
# curve, and the losses where they meet megatron-core (the trainer's objective, the baselines' training runs, the
# teacher cache). CI runs it on the second megatron-core (.venv312: Python 3.12, megatron-core 0.19.2); `make test`
# covers it on the first.
# Left to `make test`: the conversion memory benchmark's test and the loss functions' float64 references (TAID and
# every baseline at TP 1/2/4, the schedule, the diagnostics): the functions use torch.distributed only, nothing from
# megatron-core, so a second megatron-core cannot change them. Left out to bring CI back under an hour.
TEST_CORE := tests/train/test_parallel_equivalence.py tests/checkpoint/test_resume.py tests/train/test_divergence.py \
	tests/hf tests/train/test_training_run.py tests/train/test_golden_loss_curve.py tests/overrides \
	tests/losses/test_objective.py tests/losses/test_baseline_training.py tests/losses/test_cached_teacher.py
TEST_CORE_LEFT_OUT := --ignore=tests/hf/test_convert_memory.py
test-core:
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(TEST_CORE) $(TEST_CORE_LEFT_OUT) -m "$(TEST_MARKERS)"

test-triton:
	@$(PY) -c "import triton" >/dev/null 2>&1 || $(PY) -m pip install -q -e ".[triton]"
	TRITON_INTERPRET=1 $(PY) -m pytest -q tests -m "triton and not gpu"

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

check: lint test

smoke-test:
	$(PY) tools/smoke_test.py

slurm-test:
	bash tests/slurm/run_slurm_test.sh

multinode-test:
	bash tests/multinode/run_multinode_test.sh

bench:
	$(PY) tools/bench_loss.py --tokens 2048 --vocab 32000 --dtype fp32 --repeats 10 --compile --json runs/bench_loss.json

bench-step:
	$(PY) tools/bench_step.py --pairs smoke,x4 --repeats 7 --json runs/bench_step.json

# A fresh GPU machine has no .venv: use the python3 that holds its CUDA torch. megatron-core comes from .whl/ when
# missing; `python3 tools/gpu_check.py --out DIR` is the same without make (docs/performance.md, "GPU check").
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_PY) tools/gpu_check.py --out runs/gpu_check/report
# The mini-scale experiment (tools/paper_mini.py, taidtron/experiments/paper_mini/): fetches python3.11-doc with
# apt-get, trains, writes the page.
paper-mini:
	$(PY) tools/paper_mini.py $(ARGS)

paper-mini-quick:
	$(PY) tools/paper_mini.py --quick $(ARGS)

clean:
	rm -rf runs .pytest_cache
