"""Runs one after another in one process leave nothing behind, also when they fail.

A gloo process group's threads (two workers per group, and its TCP device's event loop) end only when the last
reference to the group goes: `destroy_process_group` shuts the group down but leaves them running. Whatever still
refers to a group after a run keeps its threads for the life of the process; megatron's DDP gradient hooks keep the
whole trainer (models, optimizer, every group), so a trainer that is not closed (`overrides.release_grad_hooks`)
leaks ~50 threads per run. A run refused after its trainer was built (a damaged checkpoint found at restore) did
exactly that until the trainer was released on every path."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import run_cli

WORKER = Path(__file__).with_name("teardown_worker.py")
RUNS = 10


def test_ten_runs_in_one_process_keep_threads_and_memory_flat(tmp_path):
    proc = run_cli(str(WORKER), str(tmp_path), str(RUNS), timeout=1800)
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    print(results)
    assert len(results) == RUNS and sum(r["failed"] for r in results) == RUNS // 3  # every third run is refused
    threads = [r["threads"] for r in results]
    assert threads == [threads[0]] * RUNS, threads  # before: +52 after each refused run
    # Memory settles after the first runs (allocator caches); a run's models and optimizer kept alive would add
    # several MiB each, so the growth over the last runs stays under what two leaked runs would cost.
    rss = [r["rss_mib"] for r in results]
    assert rss[-1] - rss[2] < 25, rss
