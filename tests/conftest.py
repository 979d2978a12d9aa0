"""Shared test helpers. Multi-rank tests launch real `torchrun` workers on gloo through `run_torchrun`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from taidtron.distributed import free_port  # noqa: F401  (tests import it from here)

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_torchrun(script: str | Path, nproc: int, *args: str, timeout: float = 300, env: dict | None = None) -> str:
    """Run `script` under `torchrun --nproc-per-node nproc` on this host (gloo) and return its stdout.

    Fails the calling test with the workers' output when any rank exits non-zero or the run times out.
    """
    cmd = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nproc-per-node={nproc}", "--nnodes=1",
        "--master-addr=127.0.0.1", f"--master-port={free_port()}",
        str(script), *args,
    ]
    run_env = dict(os.environ)
    run_env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""})
    run_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), run_env.get("PYTHONPATH")]))
    if env:
        run_env.update(env)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"torchrun {script} timed out after {timeout}s\n{exc.stdout}\n{exc.stderr}")
    if proc.returncode != 0:
        pytest.fail(f"torchrun {script} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-8000:]}\nSTDERR:\n{proc.stderr[-8000:]}")
    return proc.stdout
