"""Time and measure the fused TAID loss against the official formula, forward + backward, side by side.

    python tools/bench_loss.py --tokens 2048 --vocab 32000 --dtype fp32 --device cpu --json runs/bench_loss.json
    python tools/bench_loss.py --tokens 8192 --vocab 151936 --dtype bf16 --device cuda --compile   # the GPU table

`--help` says what each variant is and how time, memory and agreement are measured; the library is
`taidtron.benchmark.loss`, the figures are in docs/losses.md.
"""

import sys

from taidtron.benchmark.loss import main

if __name__ == "__main__":
    sys.exit(main())
