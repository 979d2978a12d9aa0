"""Checkpoint directories on disk: finding an iteration (`latest`, a path to one), reading its metadata, moving
directories into place, and clearing what an interrupted save or pruning left. No torch here.

    CKPT_DIR/
      latest                 name of the newest complete iteration directory, written last (atomically)
      iter_0000100/          one iteration (see taidtron/checkpoint/__init__.py)
      .tmp_iter_0000200/     a save in progress (renamed to iter_0000200 when complete)
      .old_iter_* .trash_*   what an interrupted re-save or pruning left (`remove_leftovers`)
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from taidtron.checkpoint.meta import CheckpointError, CheckpointMeta, TeacherSource, parse_meta
from taidtron.io import atomic_write_text

META_FILE = "taidtron.json"
LATEST_FILE = "latest"


def resolve_iteration_dir(path: str | Path) -> Path:
    """`path` itself when it is an iteration directory, else the one its `latest` marker names."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    latest = path / LATEST_FILE
    if latest.is_file():
        name = latest.read_text().strip()
        target = path / name
        if not name or not (target / META_FILE).is_file():
            earlier = sorted(p.name for p in path.glob("iter_*") if (p / META_FILE).is_file())
            hint = (
                f"the complete iterations there are {', '.join(earlier)}; point to one explicitly or fix {latest}"
                if earlier
                else "no complete iteration is left there"
            )
            raise CheckpointError(f"{latest} names {name!r}, which is missing or incomplete (no {META_FILE}); {hint}.")
        return target
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist; check the path (a directory made by training or "
            f"by `tools/convert.py import`)."
        )
    raise CheckpointError(
        f"{path} is not a taidtron checkpoint: it has neither {META_FILE} nor a `{LATEST_FILE}` "
        f"marker. Convert Hugging Face weights with `python tools/convert.py import`."
    )


def read_meta(path: str | Path) -> CheckpointMeta:
    """The validated taidtron.json of a checkpoint (a run directory follows `latest`)."""
    directory = resolve_iteration_dir(path)
    file = directory / META_FILE
    try:
        raw = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{file} is unreadable or corrupted ({exc}); the checkpoint cannot be trusted. Resume "
            f"from an earlier iteration directory."
        ) from None
    return parse_meta(raw, file)


def scan_files(directory: Path) -> dict[str, int]:
    """name -> size of every file a checkpoint directory holds besides taidtron.json."""
    return {
        str(p.relative_to(directory)): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != META_FILE
    }


def describe_source(path: str | Path) -> TeacherSource:
    """Where a (teacher) checkpoint came from and a hash of its content, recorded so that a resume can tell whether
    the teacher changed under it. The hash covers the checkpoint's content id (a hash of the weights for imports,
    a unique id for each training save) and its file manifest, so it is cheap to compute for a 72B teacher and
    survives moving or copying the directory."""
    directory = resolve_iteration_dir(path)
    meta = read_meta(directory)
    digest = hashlib.sha256()
    digest.update(meta.content_id.encode())
    for name, size in sorted((meta.files or scan_files(directory)).items()):
        digest.update(f"{name}:{size}\n".encode())
    return TeacherSource(path=str(directory.resolve()), hash=digest.hexdigest())


def iteration_name(step: int) -> str:
    return f"iter_{step:07d}"


def find_latest(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `ckpt_dir`, or None when there is none yet."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / LATEST_FILE).is_file():
        return None
    return resolve_iteration_dir(ckpt_dir)


def replace_dir(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`; an existing `dst` (directory or file) is moved aside first and removed only after."""
    old = dst.with_name(f".old_{dst.name}")
    remove(old)  # left by an earlier interrupted replace
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    remove(old)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def remove_leftovers(ckpt_dir: str | Path) -> None:
    """Main rank: finish what an interrupted save or pruning left in `ckpt_dir` (a hidden `.tmp_*` save, a
    `.trash_*` directory half removed, the `.old_*` copy of an interrupted re-save: put back when the new one never
    arrived, else removed). Called after every save and at start-up."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return
    for old in ckpt_dir.glob(".old_iter_*"):
        target = old.with_name(old.name.removeprefix(".old_"))
        if target.exists():
            remove(old)
        else:
            old.rename(target)
    for stale in [*ckpt_dir.glob(".tmp_iter_*"), *ckpt_dir.glob(".trash_*")]:
        shutil.rmtree(stale, ignore_errors=True)


def discard(path: Path) -> None:
    """Remove an iteration directory so that no partial copy keeps its name: rename to a hidden name, then delete."""
    trash = path.with_name(f".trash_{path.name}")
    remove(trash)
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def describe_latest(ckpt_dir: Path) -> str:
    """For messages: which checkpoint `latest` names, or that there is none."""
    latest = ckpt_dir / LATEST_FILE
    name = latest.read_text().strip() if latest.is_file() else ""
    return f"{ckpt_dir / name} is still the latest checkpoint" if name else f"{ckpt_dir} holds no checkpoint yet"


def write_latest(ckpt_dir: Path, iteration: Path) -> None:
    """Point `latest` at `iteration` (a rename: readers see the old name or the new one)."""
    atomic_write_text(ckpt_dir / LATEST_FILE, iteration.name)
