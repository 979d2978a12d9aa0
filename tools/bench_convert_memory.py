"""How much memory do `tools/convert.py import` and `export` need as the model grows? Peak resident memory of each
command against the size of generated multi-shard models.

    python tools/bench_convert_memory.py --layers 2 16 --hidden 512 --vocab 2048 --shard-size 8MB

`--help` says how the models are made and the peaks measured; the library is `taidtron.benchmark.convert_memory`,
the figures are in docs/checkpoints.md.
"""

import sys

from taidtron.benchmark.convert_memory import main

if __name__ == "__main__":
    sys.exit(main())
