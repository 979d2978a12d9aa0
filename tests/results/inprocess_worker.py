"""Runs paper-mini jobs one after another in this one process, as the experiment's workers do
(taidtron/experiments/paper_mini/runner.py).

inprocess_worker.py JOBS.json      (a list of {"name", "kind", "overrides", "marker", "log"})

Prints one JSON list: each job's result, with what the process still holds after it (threads, live megatron models).
"""

from __future__ import annotations

import gc
import json
import os
import sys
from pathlib import Path

from taidtron.experiments.paper_mini.runner import execute


def main() -> None:
    jobs_file = Path(sys.argv[1])
    cache = str(jobs_file.parent / "cache")
    results = []
    for job in json.loads(jobs_file.read_text()):
        result = execute({"spec": "test", "max_batches": None, **job}, cache)
        gc.collect()
        from megatron.core.distributed import DistributedDataParallel

        result["threads_after"] = len(os.listdir("/proc/self/task"))
        result["live_models_after"] = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
        results.append(result)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
