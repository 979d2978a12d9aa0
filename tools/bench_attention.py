"""Time and measure one transformer layer's forward + backward with each core attention, side by side.

    python tools/bench_attention.py --seq 2048 4096 --repeats 5 --json runs/bench_attention.json

`--help` says how the layer is built and how time and memory are measured; the library is
`taidtron.benchmark.attention`, the figures are in docs/cluster.md.
"""

import sys

from taidtron.benchmark.attention import main

if __name__ == "__main__":
    sys.exit(main())
