"""Stop signals: a preempted job saves and asks to be requeued; a failed job or an insistent sender stops at once.

SIGUSR1 (SLURM's `--signal`, `scancel --signal=USR1`), SIGTERM (scheduler shutdown, torchrun forwarding it) and
SIGINT (Ctrl-C) make every rank finish its optimizer step, save a checkpoint and exit with PREEMPTED_EXIT_CODE, which
the job scripts turn into a requeue. Two cases end the process at once instead, without a checkpoint (the previous
one stays `latest`), with exit code 128 + the signal number:

- a second SIGTERM or SIGINT (Ctrl-C twice, a launcher escalating). SIGUSR1 never counts: SLURM sends it ahead of
  the time limit and a SIGTERM may follow while the save is still running;
- any stop signal while a rank of this job on this host has already exited. torchrun sends SIGTERM to the surviving
  ranks when one fails; a job missing a rank cannot save (saving is collective), and a survivor blocked in a
  collective or in start-up would otherwise sit there until torchrun's SIGKILL 30 s later.

A rank that has already decided how it ends (`StopSignal.finish`: saved after a stop signal, or refused bad input)
exits at once with that code, silently, on any further stop signal: a launcher stopping the rest of the job once
the first rank exits (torchrun, DeepSpeed's launcher, srun) gets the rank's own word, not 128 + N.

The decision is taken by a watcher thread woken through `signal.set_wakeup_fd`, so it happens even while the main
thread is inside a collective or another C call, where Python signal handlers cannot run. Light on purpose:
`train.main` installs all this before importing torch, so a signal that arrives during start-up is not fatal.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

PREEMPTED_EXIT_CODE = 75
"""EX_TEMPFAIL: "saved, resume me" (launch/slurm/*.sbatch requeue on it)."""

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
_INSISTENT = (signal.SIGTERM, signal.SIGINT)  # a second one of these ends the process at once


class StopSignal:
    """Records the first stop signal (`received`); `agreed` tells every rank, at the same step, whether any rank
    received one. Create it once, in the main thread, as early as possible."""

    def __init__(self):
        self.received: int | None = None
        self.decided: int | None = None
        """The exit code this rank ends with, once known (`finish`)."""
        self._deliveries = 0
        self._insistent = 0
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        _start_watcher(self)

    def _handle(self, signum, _frame) -> None:
        # Main thread, between bytecodes: only record. The watcher thread saw the same signal when it arrived.
        if self.received is None:
            self.received = signum

    def finish(self, code: int) -> None:
        """This rank will exit with `code` (a save after a stop signal is complete, or bad input was refused): a
        stop signal from now on ends it at once with that code, without a word."""
        self.decided = code

    def _on_delivery(self, signum: int) -> None:
        """Watcher thread, as soon as a stop signal arrives."""
        if self.decided is not None:
            os._exit(self.decided)
        name = signal.Signals(signum).name
        self._deliveries += 1
        if signum in _INSISTENT:
            self._insistent += 1
        if self._insistent >= 2:
            _exit_now(signum, f"{name} received again: stopping now, without saving")
        lost = local_ranks_lost()
        if lost:
            _exit_now(signum, f"{name} received and {lost}: the job has failed and cannot save; stopping now")
        if self._deliveries == 1 and _rank() == 0:
            print(
                f"taidtron: {name} received: finishing this step, then saving and exiting with "
                f"{PREEMPTED_EXIT_CODE} (send SIGTERM or SIGINT again to stop at once, without saving)",
                file=sys.stderr,
                flush=True,
            )

    def agreed(self, ctx) -> bool:
        """One MAX all-reduce of the local flag over the world (the launcher may signal only some ranks)."""
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1.0 if self.received is not None else 0.0], device=ctx.device)
        if ctx.world_size > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)


def local_ranks_lost() -> str | None:
    """When torchrun started this rank (it exports LOCAL_WORLD_SIZE) and some of the ranks it started on this host
    have exited: a short description, else None. The ranks are the launcher's children running this command line."""
    expected = int(os.environ.get("LOCAL_WORLD_SIZE") or 0)
    if expected <= 1 or "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    import psutil

    try:
        me = psutil.Process()
        command = me.cmdline()
        alive = 0
        for sibling in me.parent().children():
            try:
                alive += sibling.status() != psutil.STATUS_ZOMBIE and sibling.cmdline() == command
            except psutil.Error:  # exited while we looked
                pass
    except (psutil.Error, AttributeError):  # no parent any more: the launcher itself is gone
        return "its launcher has exited"
    missing = expected - alive
    return (
        f"{missing} of the {expected} ranks on this host {'has' if missing == 1 else 'have'} exited"
        if missing > 0
        else None
    )


def _rank() -> int:
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def _exit_now(signum: int, why: str) -> None:
    print(f"taidtron: rank {_rank()}: {why}", file=sys.stderr, flush=True)
    os._exit(128 + signum)


# ----------------------------------------------------------------------------------------------------------
# the watcher thread: one per process, reading the signal numbers the C-level handler writes to a pipe

_watcher: dict = {"owner": None, "read_fd": None}


def _start_watcher(owner: StopSignal) -> None:
    _watcher["owner"] = owner
    if _watcher["read_fd"] is not None:
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    _watcher["read_fd"] = read_fd
    # A forked child (checkpoint writer, DataLoader worker) must not report its signals into our pipe.
    os.register_at_fork(after_in_child=_detach_child)
    threading.Thread(target=_watch, args=(read_fd,), name="taidtron-stop-signals", daemon=True).start()


def _detach_child() -> None:
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:  # forked from a thread Python does not consider the main one: nothing to detach
        pass


def _watch(read_fd: int) -> None:
    while True:
        for signum in os.read(read_fd, 64):
            if signum in STOP_SIGNALS:
                _watcher["owner"]._on_delivery(signum)
