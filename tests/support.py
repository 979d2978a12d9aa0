"""What the tests share: paths, subprocess environments, and the one protocol multi-rank workers report through.

Test side:

    results = run_torchrun(WORKER, 2, "taid")     # one dict per rank, in rank order
    assert all(r["taid"] == "ok" for r in results)

Worker side (a script run under torchrun; the repository root is on its PYTHONPATH):

    from tests.support import report
    report(taid="ok", t=[0.4, 0.41])              # merged into this rank's results file

Each rank writes `rank<k>.json` in the directory named by $TAIDTRON_TEST_RESULTS, atomically, so ranks never share
a stream and a crashed rank leaves the results it had.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from taidtron.distributed import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_ENV = "TAIDTRON_TEST_RESULTS"

__all__ = [
    "REPO_ROOT",
    "free_port",
    "gpu_env",
    "report",
    "require_gpu",
    "run_cli",
    "run_torchrun",
    "still_running",
    "subprocess_env",
    "tiny_model_config",
]


def tiny_model_config(**changes: Any):
    """The small model the test workers build when the architecture is not what they test: Qwen2-style, 2 layers,
    width 64, 4 heads in 2 key/value groups, FFN 128, vocabulary 256 (a multiple of 128: no padding at tp <= 2).
    `changes` sets any other `ModelConfig` field."""
    from taidtron.config import ModelConfig

    fields = dict(
        family="qwen2",
        num_layers=2,
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        ffn_hidden_size=128,
        vocab_size=256,
    )
    return ModelConfig(**{**fields, **changes})


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a test's child process: CPU only, one thread per process (the ranks share two cores),
    no progress bars, unbuffered output, and this checkout first on the import path."""
    env = dict(os.environ)
    env.update(
        {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "", "TAIDTRON_NO_PROGRESS": "1"}
    )
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def gpu_env(**extra: str) -> dict[str, str]:
    """Overrides of `subprocess_env` for a `gpu`-marked test: the child process sees this machine's GPU again."""
    return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES") or "0", **extra}


def require_gpu() -> None:
    """First line of a `gpu`-marked test: fail (never skip) without a CUDA device. CI deselects these tests with
    `-m "not gpu"`; `make gpu-check` runs them."""
    import torch

    if not torch.cuda.is_available():
        pytest.fail("needs a CUDA device: a gpu-marked test, run by make gpu-check (CI deselects the marker)")


def run_cli(
    *args: str, expect_ok: bool = True, timeout: float = 300, env: dict | None = None, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess:
    """`python <args>` from the repository root; fails the test with the output when the exit code surprises."""
    proc = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(MASTER_PORT=str(free_port()), **(env or {})),
        cwd=cwd,
    )
    if expect_ok and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-6000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
        )
    return proc


def run_torchrun(
    script: str | Path,
    nproc: int,
    *args: str,
    timeout: float = 300,
    env: dict | None = None,
    results_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Run `script` under `torchrun --nproc-per-node nproc` on this host (gloo); return each rank's reported
    results (see `report`), in rank order. Fails the test with the workers' output when a rank exits non-zero, the
    run times out, or a rank reported nothing."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="taidtron-results-") as tmp:
        out_dir = Path(results_dir or tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        # free_port() closes the port it found, so another process can take it before torchrun's store binds it;
        # that fails before any rank runs (EADDRINUSE), so a fresh port is tried, at most three times.
        for _ in range(3):
            cmd = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nproc-per-node={nproc}",
                "--nnodes=1",
                "--master-addr=127.0.0.1",
                f"--master-port={free_port()}",
                str(script),
                *args,
            ]
            try:
                proc = subprocess.run(
                    cmd,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    cwd=REPO_ROOT,
                    env=subprocess_env(**{RESULTS_ENV: str(out_dir)}, **(env or {})),
                )
            except subprocess.TimeoutExpired as exc:
                pytest.fail(f"torchrun {script} timed out after {timeout}s\n{exc.stdout}\n{exc.stderr}")
            if not (proc.returncode != 0 and "EADDRINUSE" in proc.stderr and "server socket" in proc.stderr):
                break
        if proc.returncode != 0:
            pytest.fail(
                f"torchrun {script} exited {proc.returncode}\nSTDOUT:\n{proc.stdout[-8000:]}\n"
                f"STDERR:\n{proc.stderr[-8000:]}"
            )
        files = [out_dir / f"rank{rank}.json" for rank in range(nproc)]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            pytest.fail(
                f"torchrun {script}: no results from {', '.join(missing)}\nSTDOUT:\n{proc.stdout[-4000:]}"
                f"\nSTDERR:\n{proc.stderr[-4000:]}"
            )
        return [json.loads(f.read_text()) for f in files]


def still_running(pids: list[int], wait_s: float = 5.0) -> list[int]:
    """The processes among `pids` still alive after waiting up to `wait_s` seconds for them to end (a zombie has
    ended: only its exit status is left for its parent to collect)."""
    import time

    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def report(**values: Any) -> None:
    """Worker side: merge `values` into this rank's results file (JSON-serialisable values)."""
    out_dir = Path(os.environ[RESULTS_ENV])
    rank = int(os.environ.get("RANK", "0"))
    path = out_dir / f"rank{rank}.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.update(values)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results))
    tmp.replace(path)
