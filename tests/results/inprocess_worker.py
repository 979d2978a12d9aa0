"""Runs tools/paper_mini.py's jobs one after another in this one process, as its workers do.

inprocess_worker.py JOBS.json      (a list of {"name", "kind", "overrides", "marker", "log"})

Prints one JSON list: each job's result, with what the process still holds after it (threads, live megatron models).
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import paper_mini  # noqa: E402


def main() -> None:
    jobs_file = Path(sys.argv[1])
    cache = str(jobs_file.parent / "cache")
    results = []
    for job in json.loads(jobs_file.read_text()):
        result = paper_mini.execute({"spec": "test", "max_batches": None, **job}, cache)
        gc.collect()
        from megatron.core.distributed import DistributedDataParallel

        result["threads_after"] = len(os.listdir("/proc/self/task"))
        result["live_models_after"] = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
        results.append(result)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
