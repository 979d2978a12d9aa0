"""What does distillation cost beyond its two parts? One TAID optimizer step against a student-only training step
plus a teacher forward pass, on the same micro-batches, in the same run.

    python tools/bench_step.py                                   # smoke and x4 pairs, CPU fp32, median of 7
    python tools/bench_step.py --pairs smoke --device cuda --json runs/bench_step.json

`--help` lists the pairs and what is timed; the library is `taidtron.benchmark.step`, the figures are in
docs/performance.md.
"""

import sys

from taidtron.benchmark.step import main

if __name__ == "__main__":
    sys.exit(main())
