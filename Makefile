# taidtron: `make install` then `make test`. Everything lives in $(VENV), made here.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU wheel of torch for machines without CUDA (a plain `pip install torch` would pull a multi-GB CUDA build).
CPU_TORCH ?= torch==2.13.0

.PHONY: install lint test test-triton smoke-test slurm-test multinode-test bench bench-step gpu-check paper-mini \
	paper-mini-quick check clean help

help:
	@echo "make install     create $(VENV) with taidtron and its dependencies (CPU torch unless CUDA torch exists)"
	@echo "make lint        ruff: lint rules and the formatter check (configured in pyproject.toml)"
	@echo "make check       make lint, then make test (what CI runs first)"
	@echo "make test        run the CPU test suite (single- and multi-process, gloo), without the Triton kernel tests"
	@echo "make test-triton install the triton extra if missing, run the Triton kernel tests in its CPU interpreter"
	@echo "make smoke-test  train a tiny teacher, then distil it into a student with TAID (GPU if present, else CPU)"
	@echo "make slurm-test  start a local SLURM cluster and run the smoke sbatch plus a preemption/resume test"
	@echo "make multinode-test  two nodes in network namespaces: 2-node sbatch, preemption, a lost node, torchrun, deepspeed"
	@echo "make bench       time the fused TAID loss against the reference formula"
	@echo "make bench-step  time a distillation step against a student step plus a teacher forward (docs/performance.md)"
	@echo "make gpu-check   on a machine with an NVIDIA GPU: every GPU check in one call, one JSON, one table (wheels from .whl/)"
	@echo "make paper-mini  TAID vs the baselines across 3 teacher sizes on the Python docs (~1 h on 2 cores) ->"
	@echo "                 docs/results/paper_mini.md; ARGS=... passes options (e.g. ARGS=--report-only)"
	@echo "make paper-mini-quick  the same pipeline in 1-3 minutes (a check, not a result) -> runs/paper_mini_quick/"

install:
	@if $(PYTHON) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then \
		echo "CUDA torch found in $(PYTHON): keeping it (venv sees system site-packages)"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q "$(CPU_TORCH)"; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@$(PY) -c "import torch, megatron.core; print('taidtron installed: torch', torch.__version__, 'megatron-core', megatron.core.__version__)"

# The Triton kernel tests need the ~700 MB triton wheel and its interpreter: `make test-triton` runs them.
# Two pytest workers (pytest-xdist, a test file per worker at a time) keep both cores busy: many tests run one
# single-threaded child process, and with one worker the second core sat idle (1.2 cores busy on average). Tests that assert how fast processes
# start or stop (marker serial) run afterwards, alone. TEST_WORKERS=1 runs everything in one process.
# The slowest directories are named first so that their files start early and the two workers finish together.
TEST_WORKERS ?= 2
TEST_MARKERS := not triton and not gpu
test:
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests/train tests/checkpoint tests/hf tests \
		-m "$(TEST_MARKERS) and not serial"
	$(PY) -m pytest -q tests -m "$(TEST_MARKERS) and serial"
	@echo "Deselected above: Triton kernel tests (marker triton: make test-triton) and GPU tests (marker gpu: make gpu-check)"

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

# A fresh GPU machine has no .venv: use the python3 that holds its CUDA torch. Wheels it lacks come from .whl/.
GPU_PY := $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	$(GPU_PY) tools/gpu_check.py --out runs/gpu_check.json
# The capacity-gap experiment (tools/paper_mini.py): fetches python3.11-doc with apt-get, trains, writes the page.
paper-mini:
	$(PY) tools/paper_mini.py $(ARGS)

paper-mini-quick:
	$(PY) tools/paper_mini.py --quick $(ARGS)

clean:
	rm -rf runs .pytest_cache
