"""Runs one after another in this one process, as a sweep, a notebook or the test suite does, and what the process
holds after each: threads and resident memory.

    teardown_worker.py OUT RUNS

Every third run resumes a run directory whose latest checkpoint has damaged bytes, so it fails after its trainer was
built (the error path must free it as well). Prints one JSON list: per run, whether it failed, the threads and the
RSS (MiB) after it.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import sys
from pathlib import Path

from taidtron.benchmark.measure import malloc_trim, rss_bytes
from taidtron.checkpoint import CheckpointError
from taidtron.config import load_config
from taidtron.distributed import LaunchEnv
from taidtron.train import run
from tests.train.test_training_run import TINY


def threads() -> int:
    return len(os.listdir("/proc/self/task"))


def rss_mib() -> float:
    """Resident memory once freed heap pages went back to the system: what runs keep alive, not what glibc's
    allocator keeps cached from them (that grew ~10 MiB over some runs and not others)."""
    malloc_trim()
    return rss_bytes() / 2**20


def config(run_dir: Path, steps: int = 2):
    overrides = [
        *TINY,
        f"optim.train_steps={steps}",
        "optim.warmup_steps=1",
        "logging.eval_interval=0",
        "checkpoint.save_interval=0",
        f"logging.run_dir={run_dir}",
    ]
    return load_config("configs/smoke.yaml", overrides)


def damage_latest(run_dir: Path) -> None:
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    largest = max(latest.glob("*.distcp"), key=lambda p: p.stat().st_size)
    with open(largest, "r+b") as f:
        f.seek(largest.stat().st_size // 2)
        f.write(b"\xff" * 64)  # same size: only the digest tells


def main() -> None:
    out, runs = Path(sys.argv[1]), int(sys.argv[2])
    results = []
    for i in range(runs):
        run_dir = out / f"run{i}"
        failed = False
        if i % 3 == 2:  # resume a damaged copy of the previous run: refused after the trainer is built
            shutil.copytree(out / f"run{i - 1}", run_dir)
            damage_latest(run_dir)
            try:
                run(config(run_dir, steps=4), launch=LaunchEnv.single())
            except CheckpointError:
                failed = True
        else:
            run(config(run_dir), launch=LaunchEnv.single())
        gc.collect()
        results.append({"failed": failed, "threads": threads(), "rss_mib": rss_mib()})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
