"""How fast, and in how much memory, tools/preprocess_data.py turns a corpus as published into a dataset.

    python tools/bench_preprocess.py                                           # the smoke corpus
    python tools/pydoc_corpus.py --out runs/pydoc                              # English prose (the Python manual)
    python tools/bench_preprocess.py --corpus runs/pydoc/pydoc.jsonl --json runs/bench_preprocess.json

`--help` says what is measured and how; the library is `taidtron.benchmark.preprocess`, the figures are in
docs/cluster.md.
"""

import sys

from taidtron.benchmark.preprocess import main

if __name__ == "__main__":
    sys.exit(main())
