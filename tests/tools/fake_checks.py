"""The GPU check's runner (`taidtron.benchmark.runner`) over fake checks, for tests/tools/test_gpu_check.py.

    fake_checks.py commands OUT WORK DEADLINE NAME:BUDGET ...     command checks, in the order given
    fake_checks.py tests OUT WORK BUDGET TEST_TIMEOUT DIR GROUP:FILE ...   one test check: pytest groups in DIR

A command check's NAME picks its behaviour by its prefix (a trailing digit tells two of a kind apart):
  quick   sleeps 0.3 s, writes a passing result
  slow    sleeps 3 s, writes a passing result
  crash   prints a line and exits 3 without a result
  partial writes a passing result at once, then sleeps (until killed)
  hang    starts a child that sleeps, writes both pids to WORK/hang.pids, sleeps (until killed)
Prints one line per check; results go to OUT as the runner writes them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from taidtron.benchmark.runner import Check, Runner, TestGroup

_RESULT = "import json, sys, time; time.sleep({sleep}); json.dump({{'status': 'pass', 'summary': 'slept {sleep} s', 'metrics': {{}}}}, open(sys.argv[1], 'w'))"  # noqa: E501
BEHAVIOUR = {
    "quick": _RESULT.format(sleep=0.3),
    "slow": _RESULT.format(sleep=3),
    "crash": "print('boom'); raise SystemExit(3)",
    "partial": _RESULT.format(sleep=0) + "; time.sleep(600)",
    "hang": (
        "import os, subprocess, sys, time; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        "open(os.environ['FAKE_WORK'] + '/hang.pids', 'w').write(f'{os.getpid()} {child.pid}'); time.sleep(600)"
    ),
}


def main() -> None:
    mode, out, work, *rest = sys.argv[1:]
    env = {**os.environ, "FAKE_WORK": work}
    if mode == "commands":
        deadline, *specs = rest
        checks = []
        for spec in specs:
            name, budget = spec.split(":")
            code = BEHAVIOUR[name.rstrip("0123456789")]
            checks.append(Check(name, f"fake {name}", float(budget), ("-c", code, "{result}"), needs_gpu=False))
        runner = Runner(Path(out), Path(work), deadline_s=float(deadline), env=env, cwd=Path(work))
    else:
        budget, test_timeout, directory, *groups = rest
        test_groups = tuple(TestGroup(g.split(":")[0], (g.split(":")[1],)) for g in groups)
        checks = [Check("tests", "fake tests", float(budget), groups=test_groups, test_timeout_s=float(test_timeout))]
        runner = Runner(Path(out), Path(work), deadline_s=float(budget), env=env, cwd=Path(directory))
    for record in runner.run(checks):
        print(f"{record['name']} {record['status']} {record['seconds']}", flush=True)


if __name__ == "__main__":
    main()
