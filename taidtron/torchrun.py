"""torchrun that keeps its ranks' word: `python -m taidtron.torchrun [torchrun options] -m taidtron.train ...`.

torchrun itself reports any rank's non-zero exit as its own failure: a ChildFailedError traceback of 40-70 lines and
exit code 1, and after a stop signal (Ctrl-C included) a SignalException traceback and 1, so a job script cannot
tell bad input from a crash or "saved, resume me" from either. This runs torchrun's own launcher in this process
(`torch.distributed.run.parse_args` and `run`, its command line unchanged) with the ranks recording how they end
(`taidtron.outcome`), then prints each rank's error line once and exits with the job's code: 0, 2 for bad input,
75 after a preemption save, else the exit code of the rank that failed first. No traceback of torchrun's own; its
log lines are kept to errors unless LOGLEVEL is set.

launch/torchrun.sh runs this. Stop signals work as with torchrun: SIGTERM, SIGINT (Ctrl-C) and SIGUSR1 (when
TORCHELASTIC_SIGNALS_TO_HANDLE lists it, as launch/torchrun.sh sets) are forwarded to every rank of this node, which
save and exit 75.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

from taidtron import outcome


def _failure_outcomes(failures: dict) -> list[outcome.Outcome]:
    """torchrun's view of the ranks that failed (a signal's negative exit status as 128 + N)."""
    return [
        outcome.Outcome(rank=rank, code=f.exitcode if f.exitcode >= 0 else 128 - f.exitcode, time=f.timestamp)
        for rank, f in failures.items()
    ]


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv)
    if "LOGLEVEL" not in os.environ:
        # torchrun logs every rank's failure and each signal it forwards as warnings; the job's code and the ranks'
        # own lines say it once.
        logging.getLogger("torch.distributed.elastic").setLevel(logging.ERROR)
        logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="taidtron-outcome-") as directory:
        os.environ[outcome.OUTCOME_DIR_ENV] = directory  # the ranks inherit this process's environment
        os.environ[outcome.LAUNCHER_PRINTS_ENV] = "1"
        failed: list[outcome.Outcome] = []
        fallback = 0
        try:
            run(args)
        except ChildFailedError as exc:
            failed = _failure_outcomes(exc.failures)
            fallback = 1
        except SignalException as exc:  # the ranks were sent the signal and waited for (they save, exit 75)
            fallback = 128 + exc.sigval
        code, lines = outcome.conclude(outcome.read_outcomes(directory), failed, fallback=fallback)
    for line in lines:
        print(line, file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
