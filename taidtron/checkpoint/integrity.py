"""Is a checkpoint whole? Checked before a byte of it is loaded: the metadata's schema, its file manifest (every file
present with its recorded size) and the dist_checkpointing index (every byte range it names lies inside its file).
Also which iterations of a run directory pass, for the messages that offer another one."""

from __future__ import annotations

from pathlib import Path

from torch.distributed.checkpoint import FileSystemReader

from taidtron.checkpoint.meta import CheckpointError, CheckpointMeta
from taidtron.checkpoint.store import META_FILE, read_meta, resolve_iteration_dir


def verify_checkpoint(path: str | Path) -> CheckpointMeta:
    """Check that a checkpoint is complete before anything is read from it; returns its metadata.

    1. taidtron.json parses and fits the schema; every file of its manifest exists with exactly the recorded size;
    2. the DCP index (.metadata) unpickles, and every byte range it lists lies inside an existing file.
    Raises CheckpointError naming the first problem found.
    """
    directory = resolve_iteration_dir(path)
    meta = read_meta(directory)
    for name, size in sorted(meta.files.items()):
        file = directory / name
        if not file.is_file():
            raise CheckpointError(
                f"{directory} is incomplete: {name} is missing (the manifest in {META_FILE} lists "
                f"it). Resume from an earlier iteration or re-create the checkpoint."
            )
        actual = file.stat().st_size
        if actual != size:
            raise CheckpointError(
                f"{file} is {'truncated' if actual < size else 'altered'}: {actual} bytes, "
                f"{size} when it was written. Resume from an earlier iteration or re-create the "
                f"checkpoint."
            )
    _verify_dcp_extents(directory)
    return meta


def _verify_dcp_extents(directory: Path) -> None:
    if not (directory / ".metadata").is_file():
        raise CheckpointError(f"{directory} has no .metadata (the dist_checkpointing index); it is incomplete.")
    try:
        metadata = FileSystemReader(str(directory)).read_metadata()
    except Exception as exc:  # a torn pickle raises anything from EOFError to UnpicklingError
        raise CheckpointError(f"{directory / '.metadata'} is corrupted ({type(exc).__name__}: {exc}).") from None
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        end = int(info.offset) + int(info.length)
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), end)
    for name, end in sorted(needed.items()):
        file = directory / name
        if not file.is_file():
            raise CheckpointError(
                f"{directory} is incomplete: {name} is missing (the dist_checkpointing index needs it)."
            )
        if file.stat().st_size < end:
            raise CheckpointError(
                f"{file} is truncated: {file.stat().st_size} bytes, the dist_checkpointing index needs {end}."
            )


def complete_iterations(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every iteration in `ckpt_dir` that passes `verify_checkpoint`, newest first."""
    found = []
    for directory in Path(ckpt_dir).glob("iter_*"):
        try:
            found.append((verify_checkpoint(directory).step, directory))
        except CheckpointError:
            continue
    return sorted(found, key=lambda item: item[0], reverse=True)


def choose_another_hint(ckpt_dir: Path, exclude: Path | None = None) -> str:
    complete = [(step, d) for step, d in complete_iterations(ckpt_dir) if exclude is None or d.name != exclude.name]
    if not complete:
        return (
            f"No complete checkpoint is left in {ckpt_dir}; start a new run in another logging.run_dir (or "
            f"checkpoint.dir)."
        )
    listed = ", ".join(f"{d.name} (step {step})" for step, d in complete[:5])
    return (
        f"Complete checkpoints there: {listed}; resume from one with checkpoint.load_iteration={complete[0][0]} "
        f"(or another of those steps)."
    )
