"""Preemption: SIGUSR1 (SLURM's `--signal`, `scancel --signal=USR1`) or SIGTERM (scheduler shutdown, torchrun)
make every rank finish its optimizer step, save a checkpoint and exit with PREEMPTED_EXIT_CODE, which the job
scripts turn into a requeue. Light on purpose: `train.main` installs the handler before importing torch, so a
signal that arrives during start-up is not fatal.
"""

from __future__ import annotations

import signal

PREEMPTED_EXIT_CODE = 75
"""EX_TEMPFAIL: "saved, resume me" (launch/slurm/*.sbatch requeue on it)."""


class StopSignal:
    """Records SIGUSR1 / SIGTERM; `agreed` tells every rank, at the same step, whether any rank received one."""

    def __init__(self):
        self.received: int | None = None
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.received = signum

    def agreed(self, ctx) -> bool:
        """One MAX all-reduce of the local flag over the world (the launcher may signal only some ranks)."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=ctx.device)
        if ctx.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)
