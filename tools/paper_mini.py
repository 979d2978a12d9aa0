"""`make paper-mini`: TAID against the baselines at a scale a 2-core CPU affords, the results page written from the
runs' raw numbers (the experiment is the package taidtron/experiments/paper_mini/).

    python tools/paper_mini.py                 # the full experiment -> docs/results/paper_mini.md (+ .json, PNGs)
    python tools/paper_mini.py --quick         # a few-minute pipeline check -> runs/paper_mini_quick/results/
    python tools/paper_mini.py --report-only   # rewrite the page and plots from docs/results/paper_mini.json

Runs are reused when their configuration is unchanged, so an interrupted experiment resumes where it stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

from taidtron.experiments.paper_mini.design import ARMS, FULL, QUICK
from taidtron.experiments.paper_mini.paths import REPO

EXIT_CODES = "exit codes: 0 page written, 1 some runs failed (page written without them), 2 bad input"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES
    )
    parser.add_argument("--quick", action="store_true", help="pipeline check: tiny models, few steps, 2 replicates")
    parser.add_argument("--work-dir", help="runs, data and checkpoints (default runs/paper_mini[_quick])")
    parser.add_argument("--out", help="page, plots and raw JSON (default docs/results; quick: <work-dir>/results)")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="worker processes (default: one per core)"
    )
    parser.add_argument("--deb", help="a python3.11-doc .deb to build the corpus from (default: apt-get download)")
    parser.add_argument(
        "--arms",
        help=f"comma-separated arms to run instead of the design's (any of {', '.join(ARMS)}): not the headline page",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the page and plots from <out>/paper_mini.json"
    )
    args = parser.parse_args(argv)
    work = Path(args.work_dir or REPO / "runs" / ("paper_mini_quick" if args.quick else "paper_mini")).resolve()
    out = Path(args.out or (work / "results" if args.quick else REPO / "docs" / "results")).resolve()

    def bad(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if args.jobs < 1:
        return bad(f"--jobs {args.jobs} must be >= 1.")
    if args.deb and not Path(args.deb).is_file():
        return bad(f"--deb {args.deb} does not exist; pass a python3.11-doc .deb file or leave it out to fetch one.")
    design = QUICK if args.quick else FULL
    if args.arms:
        arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
        unknown = [a for a in arms if a not in ARMS]
        if unknown or not arms:
            named = ", ".join(unknown) or "(none given)"
            return bad(f"--arms {args.arms}: unknown arm(s) {named}; choose from {', '.join(ARMS)}.")
        transfer = design.transfer and dataclasses.replace(design.transfer, arms=arms)
        design = dataclasses.replace(design, arms=arms, transfer=transfer)
    try:
        import matplotlib  # noqa: F401
        import scipy  # noqa: F401
    except ImportError as exc:
        return bad(f'{exc.name} is not installed; pip install -e ".[plots]".')
    from taidtron.experiments.paper_mini.experiment import RAW_NAME, run_experiment
    from taidtron.experiments.paper_mini.page import write_page

    if args.report_only:
        raw_path = out / RAW_NAME
        if not raw_path.is_file():
            return bad(f"{raw_path} does not exist; run the experiment first (without --report-only).")
        print(f"wrote {write_page(json.loads(raw_path.read_text()), out)}")
        return 0
    command = " ".join(["python tools/paper_mini.py", *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    try:
        _, raw = run_experiment(
            design,
            work,
            out,
            jobs=args.jobs,
            deb=Path(args.deb) if args.deb else None,
            command=command,
            quick=args.quick,
        )
    except ValueError as exc:  # a missing or malformed package, a config the experiment cannot run
        return bad(" ".join(str(exc).split()))
    if raw["failures"]:
        print(f"{len(raw['failures'])} run(s) failed: " + ", ".join(sorted(raw["failures"])), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
