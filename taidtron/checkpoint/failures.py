"""Why a save failed, in one line: the file system's refusals as megatron-core's writers report them, the room a
save needs, and the messages. No collectives here (`dcp` makes the ranks agree on the outcome).

How a full disk shows up (measured: tests/checkpoint/test_disk_full.py and its worker). megatron-core writes the
tensor files in processes it forks per bucket (`FileSystemWriterAsync.write_preloaded_data`), each tensor through
`torch.save` into the open file. When the file system runs out of space inside `torch.save`, torch's zip writer
sees a short write and raises `RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos N vs M`;
the OSError behind it does not survive, and the writer process sends only that text back (an exception crosses
the process boundary without its cause). Only a write outside `torch.save` (pickled objects, fsync) reports
`[Errno 28] No space left on device`. Which write meets the full disk first depends on how the remaining bytes
fall between the ranks' writer processes, so the errno was there on some runs and not on others. So: a write the
file system refused is recognised by torch's wording as well, and "no space" is also read from the file system
itself, right after the failure, before the partial save is removed.

A save also checks, before it writes a byte, that the file system has room for it (`bytes_to_write`): megatron
writes `common.pt` and `metadata.json` on rank 0 alone, outside its collectives, and a failure there would leave
the other ranks waiting in a collective that rank 0 never joins.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from pathlib import Path

import torch
from megatron.core.dist_checkpointing.dict_utils import nested_values
from megatron.core.dist_checkpointing.mapping import ShardedBase, is_main_replica

from taidtron.checkpoint.store import LATEST_FILE, describe_latest

_REFUSED_WRITE_TEXTS = ("unexpected pos", "file write failed")
"""torch's zip writer (`torch.save`) when the file took fewer bytes than it was given."""
_FULL_BELOW = 2**20
"""Free bytes under which a file system whose write just failed counts as full."""
_PER_ITEM = 2 * 2**10
"""Bytes a saved item takes beyond its data: its record in a .distcp file and its entry in the index (measured:
about 1.3 KiB for the smoke student and its optimizer)."""
_PER_SAVE = 256 * 2**10
"""common.pt, metadata.json, taidtron.json, and what the per-item estimate misses."""


def exception_chain(error: BaseException) -> list[BaseException]:
    """`error`, its causes and contexts, and the per-rank exceptions a torch CheckpointException carries."""
    seen: list[BaseException] = []
    todo = [error]
    while todo:
        exc = todo.pop()
        if exc is None or any(exc is s for s in seen):
            continue
        seen.append(exc)
        todo += [exc.__cause__, exc.__context__]
        for wrapped in getattr(exc, "failures", {}).values():  # {rank: (exception, traceback)}
            todo.append(wrapped[0] if isinstance(wrapped, tuple) else wrapped)
    return seen


def is_refused_write(error: BaseException) -> bool:
    """The file system refused a write: an OSError anywhere in the chain, or torch's zip writer saying so."""
    return any(
        isinstance(exc, OSError) or any(text in str(exc) for text in _REFUSED_WRITE_TEXTS)
        for exc in exception_chain(error)
    )


def free_bytes(directory: Path) -> int:
    """Free bytes (for this user) on the file system of `directory`, or of its nearest existing parent."""
    directory = Path(directory)
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return shutil.disk_usage(directory).free


def is_out_of_space(error: BaseException, directory: Path) -> bool:
    """ENOSPC or EDQUOT anywhere in the chain (as errno or as text: megatron's writer processes send text), or a
    refused write while the file system of `directory` is full. Call right after the failure, before anything
    written is removed."""
    codes = (errno.ENOSPC, errno.EDQUOT)
    texts = [os.strerror(code) for code in codes]
    said = any(
        getattr(exc, "errno", None) in codes or any(t in str(exc) for t in texts) for exc in exception_chain(error)
    )
    return said or (is_refused_write(error) and free_bytes(directory) < _FULL_BELOW)


def bytes_to_write(state: dict) -> int:
    """About the bytes this rank writes of a sharded state dict: the items it holds the main replica of, their data
    and their records. An over-estimate by a few percent, so that a save that passes `room_needed` also has room
    for the files rank 0 writes alone at the end."""
    total = 0
    for value in nested_values(state):
        if isinstance(value, ShardedBase) and is_main_replica(value.replica_id):
            data = value.data
            size = data.numel() * data.element_size() if isinstance(data, torch.Tensor) else len(pickle.dumps(data))
            total += _PER_ITEM + size
    return total


def room_needed(item_bytes: int, previous: int = 0) -> int:
    """Free bytes a save asks for: `bytes_to_write` summed over the ranks, or the size of the previous checkpoint of
    the run when that is more (the same state saved again), plus the small files."""
    return max(item_bytes, previous) + _PER_SAVE


def latest_bytes(ckpt_dir: Path) -> int:
    """The bytes of the iteration `latest` names in `ckpt_dir` (0 when there is none)."""
    latest = Path(ckpt_dir) / LATEST_FILE
    directory = Path(ckpt_dir) / latest.read_text().strip() if latest.is_file() else None
    if directory is None or not directory.is_dir():
        return 0
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


def no_room_message(ckpt_dir: Path, what: str, need: int, free: int) -> str:
    return (
        f"no space left on the file system of {ckpt_dir} for {what}: it needs about {_mib(need)}, "
        f"{_mib(free)} are free, so nothing was written and {describe_latest(ckpt_dir)}. Free space there, "
        f"lower checkpoint.keep_last, or set checkpoint.dir to a larger file system, then resume."
    )


def failure_message(error: BaseException | None, out_of_space: bool, ckpt_dir: Path, what: str) -> str:
    """A failed write, after the partial save was removed."""
    free = free_bytes(ckpt_dir)
    previous = describe_latest(ckpt_dir)
    if out_of_space:
        need = ""
        size = latest_bytes(ckpt_dir)
        if size:
            need = f"; one checkpoint takes {_mib(size)}"
        return (
            f"no space left on the file system of {ckpt_dir} while saving {what}: {_mib(free)} free after "
            f"removing the partial save{need}. The partial save was removed and {previous}. Free space there, "
            f"lower checkpoint.keep_last, or set checkpoint.dir to a larger file system, then resume."
        )
    reason = (
        "it failed on another rank"
        if error is None
        else f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    )
    return (
        f"saving {what} to {ckpt_dir} failed ({reason}). The partial save was removed and {previous}; "
        f"check that the directory is writable, then resume."
    )


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"
