"""Runs tools/paper_mini.py's jobs one after another in this one process, as its workers do.

inprocess_worker.py JOBS.json      (a list of {"name", "kind", "overrides", "marker", "log"})
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tools"))

import paper_mini  # noqa: E402


def main() -> None:
    jobs_file = Path(sys.argv[1])
    cache = str(jobs_file.parent / "cache")
    results = [
        paper_mini.execute({"spec": "test", "max_batches": None, **job}, cache)
        for job in json.loads(jobs_file.read_text())
    ]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
