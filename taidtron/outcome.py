"""How a job ended, in its ranks' own words: the exit code a launcher returns and the lines it prints.

A rank started by a launcher that collects outcomes (`TAIDTRON_OUTCOME_DIR` in its environment: `taidtron.torchrun`,
which launch/torchrun.sh runs, and the sbatch scripts) records how it ends, just before it exits, in
`<dir>/rank<R>.json`: its exit code, the one line a user error prints, and when. The launcher then ends with the
job's code and says it once:

    0    every rank finished
    2    bad input: the line the rank printed (each distinct line once, however many ranks saw it)
    75   the ranks saved after a stop signal: "preempted, resume me" (the sbatch scripts requeue on it)
    else the exit code of the rank that failed first

A rank that ended without recording (a crash with a traceback, a kill) counts with the exit status its launcher saw.
Where every rank writes to the launcher's own terminal or log (torchrun, smoke.sbatch), the launcher also sets
`TAIDTRON_LAUNCHER_PRINTS=1` and the ranks leave the printing of their error line to it.

    python -m taidtron.outcome DIR CODE RANKS   # after srun: print the ranks' lines once, exit with the job's
                                                # code (CODE, srun's own, when fewer than RANKS ranks recorded
                                                # an outcome and none of them failed)

No torch here: the sbatch scripts run this after srun, in a fresh Python.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from taidtron.io import atomic_write_json

OUTCOME_DIR_ENV = "TAIDTRON_OUTCOME_DIR"
LAUNCHER_PRINTS_ENV = "TAIDTRON_LAUNCHER_PRINTS"


@dataclass(frozen=True)
class Outcome:
    """How one rank ended."""

    rank: int
    code: int
    """Its exit code (128 + N for a process that signal N killed)."""
    time: float
    """When it ended (seconds since the epoch)."""
    line: str | None = None
    """The one line a user error printed (`taidtron: error: ...`), when that is how it ended."""


def _rank() -> int:
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def finish(code: int, line: str | None = None) -> int:
    """Rank side, last thing before exiting with `code`: record the outcome when a launcher collects them, and
    print `line` (to stderr) unless the launcher prints it. Returns `code`."""
    directory = os.environ.get(OUTCOME_DIR_ENV)
    if directory:
        outcome = {"rank": _rank(), "code": code, "time": time.time(), "line": line}
        try:
            atomic_write_json(Path(directory) / f"rank{_rank()}.json", outcome)
        except OSError:  # the launcher's directory is gone: it prints nothing, so this rank must
            directory = None
    if line is not None and not (directory and os.environ.get(LAUNCHER_PRINTS_ENV) == "1"):
        print(line, file=sys.stderr, flush=True)
    return code


def read_outcomes(directory: str | Path) -> list[Outcome]:
    """Every rank's recorded outcome in `directory`, in the order they ended."""
    found = []
    for file in Path(directory).glob("rank*.json"):
        try:
            found.append(Outcome(**json.loads(file.read_text())))
        except (OSError, ValueError, TypeError):  # a rank killed while writing leaves a temporary file, never this
            continue
    return sorted(found, key=lambda o: (o.time, o.rank))


def conclude(
    outcomes: list[Outcome], unrecorded: list[Outcome] = (), *, fallback: int = 0, expected: int | None = None
) -> tuple[int, list[str]]:
    """The job's exit code and the lines to print once. `outcomes`: what the ranks recorded; `unrecorded`: the
    failures the launcher saw of ranks that recorded nothing; `fallback`: the launcher's own code, taken when no rank
    failed but fewer than `expected` ranks recorded an outcome (the others were killed, or never started)."""
    recorded = {o.rank for o in outcomes}
    ended = sorted([*outcomes, *(o for o in unrecorded if o.rank not in recorded)], key=lambda o: (o.time, o.rank))
    lines = list(dict.fromkeys(o.line for o in ended if o.line))
    failed = [o for o in ended if o.code != 0]
    if failed:
        return failed[0].code, lines
    if not outcomes or (expected is not None and len(outcomes) < expected):
        return fallback, lines
    return 0, lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or not all(a.isdigit() for a in argv[1:]):
        print("usage: python -m taidtron.outcome DIR CODE RANKS", file=sys.stderr)
        return 2
    directory, fallback, expected = Path(argv[0]), int(argv[1]), int(argv[2])
    outcomes = read_outcomes(directory) if directory.is_dir() else []
    code, lines = conclude(outcomes, fallback=fallback, expected=expected)
    for line in lines:
        print(line, file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
