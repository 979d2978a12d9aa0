"""Plot training runs: loss, TAID t (where logged), learning rate, gradient norm and the validation curves
(eval.jsonl) of one or more run directories, overlaid with a legend, to one PNG.

    python tools/plot_run.py runs/smoke/distill                      # -> runs/smoke/distill/plots.png
    python tools/plot_run.py runs/a runs/b --labels taid fkl --out cmp.png

Headless (matplotlib's Agg backend); needs the `plots` extra: pip install -e ".[plots]".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 written, 2 bad input",
    )
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (logging.run_dir)")
    parser.add_argument("--out", help="PNG to write (default: plots.png in the first RUN_DIR)")
    parser.add_argument("--labels", nargs="+", help="legend names, one per RUN_DIR (default: directory names)")
    parser.add_argument("--title", help="figure title")
    args = parser.parse_args(argv)
    if args.labels and len(args.labels) != len(args.run_dirs):
        print(
            f"error: --labels has {len(args.labels)} names for {len(args.run_dirs)} run directories; give one "
            f"per RUN_DIR.",
            file=sys.stderr,
        )
        return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print('error: matplotlib is not installed; pip install -e ".[plots]".', file=sys.stderr)
        return 2
    from taidtron.plots import load_run, plot_runs

    labels = args.labels or [Path(d).name for d in args.run_dirs]
    if len(set(labels)) < len(labels):  # runs/a/distill vs runs/b/distill: tell them apart by their paths
        labels = args.run_dirs
    try:
        runs = [load_run(run_dir, label) for run_dir, label in zip(args.run_dirs, labels)]
        out = plot_runs(runs, args.out or Path(args.run_dirs[0]) / "plots.png", title=args.title)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
