"""Time checkpoint digests (XXH3-128) against a plain read, per GiB, in the smoke save, and estimated for a 1.5B
student with its optimizer state.

    python tools/bench_checkpoint.py --gib 1 --repeats 3 --json runs/bench_checkpoint.json

`--help` says what is timed and how; the library is `taidtron.benchmark.checkpoint`, the figures are in
docs/checkpoints.md.
"""

import sys

from taidtron.benchmark.checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
