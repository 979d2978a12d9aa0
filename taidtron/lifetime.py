"""Helper processes die with the process that started them.

A trainer killed with SIGKILL (the OOM killer, a scheduler, `kill -9`) runs no clean-up, so every helper it forked
or spawned must end by itself: the checkpoint writer's multiprocessing Manager (300-400 MB, and it ignores SIGTERM on
purpose, see `overrides.checkpointing.prepare_writer`), megatron's per-file checkpoint writer processes, DataLoader
workers and tokenization pools.

    lifetime.install()              # in the entry point: every child forked from now on dies with this process
    die_with_parent(parent_pid)     # first thing in a spawned child (initializer / worker_init_fn)
    die_with_launcher()             # in the entry point: a rank of torchrun / DeepSpeed's launcher ends with it

The same holds one level up: a per-node launcher (torchrun's agent, DeepSpeed's launcher) killed with SIGKILL cannot
stop its ranks, which would go on holding their devices, blocked in a collective until its timeout (30 minutes).

On Linux the child asks the kernel to SIGKILL it when its parent dies (`prctl(PR_SET_PDEATHSIG)`), then checks that
the parent is still the one it expects: a parent that died before the request was made is not signalled. The kernel
ties the request to the parent *thread*, so a child forked from another thread (or on another OS) polls its parent
from a daemon thread instead.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_POLL_SECONDS = 0.5
_fork_state = {"installed": False, "parent": 0, "main_thread": True}


def die_with_parent(parent_pid: int, *, forked_from_main_thread: bool = True) -> None:
    """Make this (child) process end when `parent_pid` ends. Call it first thing in the child."""
    if not (forked_from_main_thread and _request_parent_death_signal()):
        threading.Thread(target=_watch_parent, args=(parent_pid,), name="taidtron-parent-watch", daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the request: nobody will signal us
        os._exit(1)


# Set in the ranks they start: torchrun (TORCHELASTIC_RUN_ID) and DeepSpeed's launcher (CROSS_RANK, as
# taidtron.distributed.read_launch_env reads it).
_LAUNCHER_ENV = ("TORCHELASTIC_RUN_ID", "CROSS_RANK")


def die_with_launcher() -> None:
    """When a per-node launcher started this process (the environment says so), end it when the launcher ends.
    Polled from a thread, not the kernel's parent-death signal: a launcher may start its ranks from a thread that
    ends before they do."""
    if any(name in os.environ for name in _LAUNCHER_ENV):
        die_with_parent(os.getppid(), forked_from_main_thread=False)


def _request_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(_POLL_SECONDS)
    os._exit(1)


def _before_fork() -> None:
    _fork_state["parent"] = os.getpid()
    _fork_state["main_thread"] = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    die_with_parent(_fork_state["parent"], forked_from_main_thread=_fork_state["main_thread"])


def install() -> None:
    """Every child this process forks from now on (multiprocessing's fork context, DataLoader workers, megatron's
    checkpoint writers) dies with it. Children started by exec (subprocess, multiprocessing's spawn) run no Python
    fork hook: they call `die_with_parent` themselves. Idempotent."""
    if _fork_state["installed"]:
        return
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _fork_state["installed"] = True
