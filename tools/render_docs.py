"""Regenerate the documentation pages that are made from the code, so that no table is kept by hand:

docs/config.md    every config key with its default and meaning (`taidtron.config_docs.config_reference`)

python tools/render_docs.py            # rewrite them
python tools/render_docs.py --check    # exit 1 when a committed page differs from what the code gives
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taidtron.config_docs import config_reference
from taidtron.io import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
PAGES = {"docs/config.md": config_reference}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for name, render in PAGES.items():
        path, text = REPO / name, render()
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(name)
        else:
            atomic_write_text(path, text)
            print(f"wrote {name}")
    if stale:
        print(f"out of date: {', '.join(stale)}; run python tools/render_docs.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
