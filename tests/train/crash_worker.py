"""torchrun worker: the real entry point, with one rank failing on purpose.

    crash_worker.py RANK WHERE --config ... [section.key=value ...]

Rank RANK raises a RuntimeError at WHERE: `start-up` (before its process group exists, so the other ranks wait for
it in the rendezvous) or `step-2` (in its third optimizer step, the others inside the step's collectives). It
reports that it is failing through `tests.support.report` first.
"""

from __future__ import annotations

import os
import sys

from taidtron import distributed, train
from taidtron.trainer import Trainer
from tests.support import report


def fail() -> None:
    report(failed=True)
    raise RuntimeError(f"injected failure on rank {os.environ['RANK']}")


def main() -> int:
    failing_rank, where, *argv = sys.argv[1:]
    if int(os.environ["RANK"]) == int(failing_rank):
        if where == "start-up":
            distributed.init_distributed = lambda *args, **kwargs: fail()
        else:
            train_step = Trainer.train_step

            def failing_train_step(self, micro_batches):
                if self.step == 2:
                    fail()
                return train_step(self, micro_batches)

            Trainer.train_step = failing_train_step
    return train.main(argv)


if __name__ == "__main__":
    sys.exit(main())
