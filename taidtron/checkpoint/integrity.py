"""Is a checkpoint whole and intact? Checked before a byte of it is loaded: the metadata's schema, its file manifest
(every file present with its recorded size), the dist_checkpointing index (every byte range it names lies inside
its file), and the files' contents against the digests recorded when they were written. Also which iterations of a
run directory pass, for the messages that offer another one.

Digests: xxHash's XXH3 (128 bits) of every file, `xxh3_128:<hex>`. A non-cryptographic hash is enough to catch
damage (bit rot, a torn or overwritten copy, a file of another checkpoint) and runs at memory speed, where sha256
would be the slowest part of a save; it comes from the `xxhash` package, the reference implementation's binding.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from pathlib import Path

import torch.distributed as dist
import xxhash
from torch.distributed.checkpoint import FileSystemReader

from taidtron.checkpoint.meta import CheckpointError, CheckpointMeta
from taidtron.checkpoint.store import LATEST_FILE, META_FILE, read_meta, resolve_iteration_dir

DIGEST_ALGORITHM = "xxh3_128"

log = logging.getLogger(__name__)


def file_digest(path: Path) -> str:
    """`xxh3_128:<hex>` of a file's bytes, read in one pass."""
    with open(path, "rb") as f:
        return f"{DIGEST_ALGORITHM}:{hashlib.file_digest(f, xxhash.xxh3_128).hexdigest()}"


def share_of_files(sizes: dict[str, int], rank: int, world_size: int) -> list[str]:
    """The files rank `rank` of `world_size` hashes when the ranks verify a checkpoint together: each file goes to
    the rank with the fewest bytes so far, largest first, so every byte is read once and the ranks finish
    together. Every rank computes the same split."""
    load = [0] * world_size
    mine = []
    for name, size in sorted(sizes.items(), key=lambda item: (-item[1], item[0])):
        owner = min(range(world_size), key=lambda r: (load[r], r))
        load[owner] += size
        if owner == rank:
            mine.append(name)
    return mine


def find_damage(directory: Path, meta: CheckpointMeta, names: Iterable[str]) -> str | None:
    """The first of `names` whose content differs from its recorded digest, described for a message; None when
    they are intact (a name without a recorded digest is not checked)."""
    for name in names:
        recorded = meta.digests.get(name)
        if recorded is None:
            continue
        algorithm = recorded.partition(":")[0]
        if algorithm != DIGEST_ALGORITHM:
            return (
                f"{directory / name} records a digest of kind {algorithm!r}, which this taidtron cannot check "
                f"(it computes {DIGEST_ALGORITHM}); upgrade taidtron"
            )
        actual = file_digest(directory / name)
        if actual != recorded:
            return (
                f"{directory / name} is damaged: its bytes differ from those written (digest "
                f"{actual.partition(':')[2][:16]}..., recorded {recorded.partition(':')[2][:16]}...)"
            )
    return None


def verify_contents(directory: Path, meta: CheckpointMeta) -> None:
    """Every file of `directory` against its recorded digest, in this process (the training ranks split this work:
    `taidtron.checkpoint.dcp`). Raises CheckpointError naming the first damaged file; nothing to check in a
    checkpoint written before digests."""
    problem = find_damage(directory, meta, sorted(meta.digests))
    if problem is not None:
        raise CheckpointError(f"{problem}. {damage_hint(directory)}")


def verify_contents_together(directory: Path, meta: CheckpointMeta, rank: int, world_size: int) -> None:
    """`verify_contents` split between the ranks of the world (all call it): each reads a share of the files
    (`share_of_files`: every byte once, about 1/world of them per rank). Damage anywhere is the same CheckpointError
    on every rank, worded by rank 0, which also looks for an intact iteration to offer. A checkpoint written before
    digests loads with a logged note (its sizes and index are checked, its bytes cannot be)."""
    if not meta.digests:
        if rank == 0:
            log.warning(
                "%s records no file digests (written by an earlier taidtron): its files' sizes and index are "
                "checked, their bytes cannot be",
                directory,
            )
        return
    sizes = {name: meta.files.get(name, 0) for name in meta.digests}
    problem = find_damage(directory, meta, share_of_files(sizes, rank, world_size))
    if world_size > 1:
        problems: list[str | None] = [None] * world_size
        dist.all_gather_object(problems, problem)
        problem = next((p for p in problems if p is not None), None)
    if problem is None:
        return
    message = [f"{problem}. {damage_hint(directory)}" if rank == 0 else None]
    if world_size > 1:
        dist.broadcast_object_list(message, src=0)
    raise CheckpointError(message[0])


def verify_checkpoint(path: str | Path, *, contents: bool = False) -> CheckpointMeta:
    """Check that a checkpoint is complete before anything is read from it; returns its metadata.

    1. taidtron.json parses and fits the schema; every file of its manifest exists with exactly the recorded size;
    2. the DCP index (.metadata) unpickles, and every byte range it lists lies inside an existing file;
    3. with `contents`, every file's bytes against the digest recorded when it was written (a full read).
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
    if contents:
        verify_contents(directory, meta)
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


def choose_another_hint(ckpt_dir: Path, exclude: Path | None = None, *, contents: bool = False) -> str:
    """For a message about a checkpoint that cannot be loaded: the complete iterations of `ckpt_dir` and the
    `checkpoint.load_iteration` of the newest one. With `contents` (messages about damaged bytes), the newest one
    that is also intact: its files are read against their digests, newest first, until one passes."""
    complete = [(step, d) for step, d in complete_iterations(ckpt_dir) if exclude is None or d.name != exclude.name]
    if contents:
        intact = next(((step, d) for step, d in complete if _intact(d)), None)
        if intact is None:
            return (
                f"No complete and intact checkpoint is left in {ckpt_dir}; start a new run in another "
                f"logging.run_dir (or checkpoint.dir)."
            )
        return (
            f"The newest complete and intact checkpoint there is {intact[1].name} (step {intact[0]}); resume "
            f"from it with checkpoint.load_iteration={intact[0]}."
        )
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


def damage_hint(directory: Path) -> str:
    """What to do about a damaged iteration directory: another iteration of its run, else re-create it."""
    if (directory.parent / LATEST_FILE).is_file():
        return choose_another_hint(directory.parent, exclude=directory, contents=True)
    return "Re-create the checkpoint (tools/convert.py import for Hugging Face weights) or restore it from a copy."


def _intact(directory: Path) -> bool:
    try:
        meta = read_meta(directory)
    except CheckpointError:
        return False
    return find_damage(directory, meta, sorted(meta.digests)) is None
