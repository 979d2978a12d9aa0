"""Files written whole or not at all.

Every file taidtron writes that something else reads back (configs, JSON reports, markers, pages, plots, metrics
rewritten on resume) goes through here: the bytes go to a hidden temporary file in the same directory, are flushed
and fsync'ed, and the temporary file is renamed over the target. A reader, or a process killed mid-write, sees
either the old file or the complete new one, never half of one.

    atomic_write_text(path, text)
    atomic_write_json(path, obj)                 # indent=2, sorted keys off, trailing newline
    with atomic_output(path) as f: ...           # a file object, for writers that stream (savefig, jsonl)
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_output(path: str | Path, mode: str = "w", *, encoding: str | None = "utf-8") -> Iterator[IO]:
    """A file object whose content replaces `path` when the block ends without an exception; on an exception the
    temporary file is removed and `path` is untouched. The parent directory is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Per process: two processes writing the same target never share a temporary file.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    binary = "b" in mode
    try:
        with open(tmp, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_output(path) as f:
        f.write(text)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_output(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
