"""Build the English text corpus of the paper-mini experiment from the Python 3.11 documentation (Debian's
`python3.11-doc`); the corpus itself is `taidtron/experiments/paper_mini/corpus.py`.

    python tools/pydoc_corpus.py --out runs/paper_mini/data            # apt-get download, then build
    python tools/pydoc_corpus.py --out DIR --deb python3.11-doc_*.deb   # from a .deb fetched elsewhere

Writes `<out>/pydoc.jsonl` (one document per HTML page of the manual) and `<out>/pydoc.meta.json` (the package
version, the .deb's SHA-256, the text's SHA-256, counts and the licence).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from taidtron.experiments.paper_mini.corpus import PACKAGE, CorpusError, build_corpus, fetch_deb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for pydoc.jsonl and pydoc.meta.json")
    parser.add_argument("--deb", help=f"a {PACKAGE} .deb (default: apt-get download into --out)")
    parser.add_argument("--max-pages", type=int, help="only the first N pages in the hashed order (default: all)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        if args.deb and not Path(args.deb).is_file():
            raise CorpusError(f"--deb {args.deb} does not exist; pass the path of a {PACKAGE} .deb file.")
        if args.max_pages is not None and args.max_pages < 1:
            raise CorpusError(f"--max-pages {args.max_pages} must be >= 1.")
        meta = build_corpus(Path(args.deb) if args.deb else fetch_deb(out), out, args.max_pages)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {out / 'pydoc.jsonl'}: {meta['documents']} pages, {meta['characters']:,} characters from "
        f"{meta['package']} {meta['version']}; text sha256 {meta['text_sha256']}"
        f"{'' if meta['matches_reference'] or args.max_pages else ' (differs from the reference build)'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
