"""Teacher cache measurements: bytes per token, write throughput, the top-K error against the full teacher, and the
held-out loss of students distilled from a cache against the online teacher.

    python tools/bench_cache.py bytes --json runs/cache_bench/bytes.json
    python tools/bench_cache.py heldout --config configs/smoke.yaml --seeds 1,2,3 --top-k 32

`--help` says what each measurement is; the library is `taidtron.benchmark.cache`, the figures are in
docs/teacher_cache.md.
"""

import sys

from taidtron.benchmark.cache import main

if __name__ == "__main__":
    sys.exit(main())
