"""Everything that needs a GPU, in one call of at most 7 minutes (docs/performance.md, "GPU check"):

    python3 tools/gpu_check.py --out DIR        # on the GPU machine: no install, no make needed
    python3 tools/gpu_check.py --dry-run        # the checks, their budgets and commands

A thin front end of `taidtron.benchmark.gpu_check` (`--help` says everything). On a bare GPU image taidtron is not
installed: the check then runs as `python -m taidtron.benchmark.gpu_check` with this checkout on PYTHONPATH, which
its checks inherit.
"""

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    argv = [sys.executable, "-m", "taidtron.benchmark.gpu_check", *sys.argv[1:]]
    os.execve(sys.executable, argv, env)
