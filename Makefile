# taidtron: `make install` then `make test`. Everything lives in $(VENV), made here.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# CPU wheel of torch for machines without CUDA (a plain `pip install torch` would pull a multi-GB CUDA build).
CPU_TORCH ?= torch==2.13.0

.PHONY: install test smoke-test slurm-test multinode-test bench check clean help

help:
	@echo "make install     create $(VENV) with taidtron and its dependencies (CPU torch unless CUDA torch exists)"
	@echo "make test        run the CPU test suite (single- and multi-process, gloo)"
	@echo "make smoke-test  train a tiny teacher, then distil it into a student with TAID (GPU if present, else CPU)"
	@echo "make slurm-test  start a local SLURM cluster and run the smoke sbatch plus a preemption/resume test"
	@echo "make multinode-test  two nodes in network namespaces: 2-node sbatch, preemption, a lost node, torchrun, deepspeed"
	@echo "make bench       time the fused TAID loss against the reference formula"

install:
	@if $(PYTHON) -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then \
		echo "CUDA torch found in $(PYTHON): keeping it (venv sees system site-packages)"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q "$(CPU_TORCH)"; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@$(PY) -c "import torch, megatron.core; print('taidtron installed: torch', torch.__version__, 'megatron-core', megatron.core.__version__)"

test:
	$(PY) -m pytest -q tests

check: test

smoke-test:
	$(PY) tools/smoke_test.py

slurm-test:
	bash tests/slurm/run_slurm_test.sh

multinode-test:
	bash tests/multinode/run_multinode_test.sh

bench:
	$(PY) tools/bench_loss.py --tokens 2048 --vocab 32000 --dtype fp32 --repeats 10 --compile --json runs/bench_loss.json

clean:
	rm -rf runs .pytest_cache
