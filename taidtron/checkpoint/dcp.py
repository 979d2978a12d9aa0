"""Model and optimizer state on megatron-core dist_checkpointing: save and load at any tp/pp/dp (a checkpoint saved
at one layout loads at another), per-rank RNG states, and the checks that keep a checkpoint honest: no NaN or
infinity is ever saved, a failed write (e.g. a full disk) leaves the previous checkpoint as `latest`, and a
checkpoint of another architecture is refused before a tensor is read.

Every function takes the run's `ParallelContext`: the rank layout it records and restores RNG states with, and
whether this rank writes the metadata. All ranks of the world call them together.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import random
import re
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core.dist_checkpointing.dict_utils import extract_matching_values
from megatron.core.dist_checkpointing.mapping import ShardedBase, ShardedObject
from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy, load_sharded_metadata
from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelLoadStrategyWrapper
from torch.distributed.checkpoint.api import CheckpointException

from taidtron import overrides
from taidtron.checkpoint.failures import (
    bytes_to_write,
    failure_message,
    free_bytes,
    is_out_of_space,
    is_refused_write,
    latest_bytes,
    no_room_message,
    room_needed,
)
from taidtron.checkpoint.integrity import (
    choose_another_hint,
    file_digest,
    verify_checkpoint,
    verify_contents_together,
)
from taidtron.checkpoint.meta import FORMAT_VERSION, CheckpointError, CheckpointMeta, Layout, SaveError
from taidtron.checkpoint.model_check import check_architecture
from taidtron.checkpoint.store import (
    LATEST_FILE,
    META_FILE,
    describe_latest,
    discard,
    iteration_name,
    remove_leftovers,
    replace_dir,
    resolve_iteration_dir,
    scan_files,
    write_latest,
)
from taidtron.distributed import ParallelContext
from taidtron.io import atomic_write_text
from taidtron.overrides.streamed_save import Materialize

RNG_KEY = "rng_state"
EXTRA_STATE_SUFFIX = "_extra_state"
"""Transformer Engine modules' FP8 bookkeeping in a state dict; the only keys a load tolerates missing."""
LOAD_TIMEOUT = datetime.timedelta(hours=2)
"""Collective timeout while a checkpoint loads: reading a 72B teacher from a shared file system takes minutes."""

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------
# save


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    *,
    model: torch.nn.Module,
    optimizer=None,
    meta: CheckpointMeta,
    ctx: ParallelContext,
    keep_last: int = 0,
) -> Path:
    """Save model (+ optimizer, + per-rank RNG states when training) under ckpt_dir/iter_<step>. All ranks call it.

    Refused (SaveError, nothing written) when any rank's model or optimizer state holds a NaN or an infinity.
    Atomic: everything is written to a hidden temporary directory, renamed into place when complete, and only then
    is `latest` updated (itself via rename). A crash at any point leaves the previous checkpoint as `latest`; a
    failed write (e.g. no space left) removes the temporary directory and raises SaveError on every rank.
    `keep_last` > 0 then removes all but the newest `keep_last` iteration directories older than this one (each
    renamed to a hidden name first, so a kill mid-removal never leaves a partial `iter_*`); iterations newer than
    this step (from a run resumed at an earlier `checkpoint.load_iteration`) are left until a save replaces them.
    """
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / iteration_name(step)
    tmp = ckpt_dir / f".tmp_{final.name}"
    _refuse_non_finite(model, optimizer, ckpt_dir, step, ctx)
    # Each stage ends with the ranks agreeing whether any of them failed (`_together`), so that a rank whose write
    # failed never leaves the others waiting in a collective it does not join.
    what = f"step {step}"
    _together(ctx, ckpt_dir, what, tmp, lambda: _start_empty(tmp, parents=True) if ctx.is_main else None)
    _together(
        ctx,
        ckpt_dir,
        what,
        tmp,
        lambda: _write_iteration(
            tmp, model=model, optimizer=optimizer, meta=meta, step=step, save_rng=optimizer is not None, ctx=ctx
        ),
    )
    _together(ctx, ckpt_dir, what, tmp, lambda: _publish(ckpt_dir, tmp, final, keep_last) if ctx.is_main else None)
    return final


def save_model(
    directory: str | Path,
    *,
    model: torch.nn.Module,
    meta: CheckpointMeta,
    ctx: ParallelContext,
    overwrite: bool = False,
    materialize: Materialize | None = None,
    content_id: Callable[[], str] | None = None,
) -> Path:
    """Write a single iteration directory holding only model weights (what `tools/convert.py import` makes), with
    the same atomicity as `save_checkpoint`: a hidden sibling is written and renamed to `directory` at the end, and
    removed if the save fails.

    `materialize`: for a model built on the meta device (its structure, no weights), the function that gives each
    tensor chunk as it is written (`overrides.streamed_save_strategy`), so that only one is in memory at a time.
    `content_id`: called once every tensor is written, for a content id known only then (an import hashes the
    weights it streams); None: `meta.content_id`."""
    directory = Path(directory)
    tmp = directory.with_name(f".tmp_{directory.name}")
    if ctx.is_main and directory.exists() and any(directory.iterdir()) and not overwrite:
        raise CheckpointError(f"{directory} exists and is not empty; choose another directory or overwrite it.")
    where, what = directory.parent, directory.name
    _together(ctx, where, what, tmp, lambda: _start_empty(tmp, parents=True) if ctx.is_main else None)
    _together(
        ctx,
        where,
        what,
        tmp,
        lambda: _write_iteration(
            tmp,
            model=model,
            optimizer=None,
            meta=meta,
            step=meta.step,
            save_rng=False,
            ctx=ctx,
            materialize=materialize,
            content_id=content_id,
        ),
    )
    _together(ctx, where, what, tmp, lambda: replace_dir(tmp, directory) if ctx.is_main else None)
    return directory


def _start_empty(tmp: Path, parents: bool) -> None:
    """Rank 0: an empty temporary directory to write into (one left by an interrupted save is removed)."""
    tmp.parent.mkdir(parents=parents, exist_ok=True)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()


def _publish(ckpt_dir: Path, tmp: Path, final: Path, keep_last: int) -> None:
    """Rank 0, once every rank's write succeeded: rename the save into place, then point `latest` at it, then tidy.
    A failure before `latest` moved leaves no trace of this save; one after it (tidying) only a warning."""
    replace_dir(tmp, final)  # a re-save of the same step (e.g. a signal right after a periodic save)
    try:
        write_latest(ckpt_dir, final)
    except OSError:
        latest = ckpt_dir / LATEST_FILE
        if not (latest.is_file() and latest.read_text().strip() == final.name):
            shutil.rmtree(final, ignore_errors=True)
        raise
    try:
        remove_leftovers(ckpt_dir)
        if keep_last > 0:
            older = sorted(p for p in ckpt_dir.glob("iter_*") if p.is_dir() and p.name < final.name)
            for old in older[: max(0, len(older) - (keep_last - 1))]:
                discard(old)
    except OSError as exc:
        log.warning("%s saved, but removing older checkpoints failed (%s); the next save retries", final, exc)


def _write_iteration(
    tmp: Path,
    *,
    model,
    optimizer,
    meta: CheckpointMeta,
    step: int,
    save_rng: bool,
    ctx: ParallelContext,
    materialize: Materialize | None = None,
    content_id: Callable[[], str] | None = None,
) -> None:
    """All ranks: write model (+ optimizer, + RNG) into `tmp`, then rank 0 adds taidtron.json with the manifest.
    `materialize`, `content_id`: see `save_model`."""
    if not isinstance(meta, CheckpointMeta):
        raise TypeError(f"meta must be a CheckpointMeta, got {type(meta).__name__}")
    if optimizer is not None and not overrides.optimizer_has_state(optimizer):
        # megatron's DistributedOptimizer.state_dict() asserts on Adam state that only exists after a step.
        raise CheckpointError(
            "the optimizer has taken no step yet, so it has no state to save; save after the "
            "first optimizer step (or save the model alone)."
        )
    state = _sharded_state(model, optimizer, is_loading=False)
    if save_rng:
        state[RNG_KEY] = _rng_sharded_object(ctx, _rng_state())
    _check_room(state, tmp, ctx)
    strategy = overrides.streamed_save_strategy(materialize) if materialize is not None else None
    dist_checkpointing.save(state, str(tmp), sharded_strategy=strategy)
    _barrier(ctx)  # every rank's files are closed before rank 0 lists them
    digests = _digest_together(tmp, ctx)
    if ctx.is_main:
        params_dtype = next(iter(model.parameters())).dtype
        meta = dataclasses.replace(
            meta,
            format_version=FORMAT_VERSION,
            step=step,
            content_id=(content_id() if content_id is not None else meta.content_id) or uuid.uuid4().hex,
            saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            params_dtype=str(params_dtype).removeprefix("torch."),
            layout=Layout(tp=ctx.tp, pp=ctx.pp, dp=ctx.dp),
            has_optimizer=optimizer is not None,
            has_rng=save_rng,
            files=scan_files(tmp),
            digests=digests,
        )
        atomic_write_text(tmp / META_FILE, meta.to_json())


_OWN_FILE = re.compile(r"__(\d+)_\d+\.distcp")
"""megatron-core's FileSystemWriterAsync names the tensor files a rank writes `__<global rank>_<n>.distcp`."""


def _digest_together(directory: Path, ctx: ParallelContext) -> dict[str, str]:
    """Right after the write, while the bytes are still in the page cache: every rank hashes the tensor files it
    wrote itself, in parallel, and rank 0 the rest (the index, common.pt, and any file no rank claims). Returns
    name -> digest of every file on rank 0, {} elsewhere."""
    names = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name != META_FILE)

    def owner(name: str) -> int:
        match = _OWN_FILE.fullmatch(name)
        return int(match.group(1)) if match and int(match.group(1)) < ctx.world_size else 0

    mine = {name: file_digest(directory / name) for name in names if owner(name) == ctx.rank}
    if ctx.world_size == 1:
        return mine
    gathered: list[dict[str, str] | None] = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(mine, gathered, dst=0)
    return {name: digest for part in gathered or [] for name, digest in (part or {}).items()}


def _refuse_non_finite(model: torch.nn.Module, optimizer, ckpt_dir: Path, step: int, ctx: ParallelContext) -> None:
    """Every rank checks its own shards; if any holds a non-finite value, every rank raises SaveError before a
    byte is written."""
    with torch.no_grad():
        local = _non_finite_tensors(model, optimizer)
    (bad,) = _any_rank(ctx, bool(local))
    if not bad:
        return
    where = (
        (", ".join(local[:3]) + (f" and {len(local) - 3} more" if len(local) > 3 else ""))
        if local
        else "tensors on another rank"
    )
    raise SaveError(
        f"step {step} was not saved: the training state holds NaN or infinite values ({where}); "
        f"{describe_latest(ckpt_dir)}. The run diverged: lower optim.lr and resume with "
        f"checkpoint.override=[optim.lr] (or an earlier checkpoint with checkpoint.load_iteration)."
    )


def _non_finite_tensors(model: torch.nn.Module, optimizer) -> list[str]:
    """What of this rank's shards holds a NaN or an infinity: model parameters by name, optimizer state (fp32 main
    parameters, Adam moments) by kind."""
    found = [
        f"student {name}"
        for name, param in model.named_parameters()
        if param.is_floating_point() and not bool(torch.isfinite(param).all())
    ]
    kinds: dict[str, int] = {}
    for kind, tensor in overrides.optimizer_state_tensors(optimizer) if optimizer is not None else []:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            kinds[kind] = kinds.get(kind, 0) + 1
    found += [f"optimizer {kind} ({count} tensor{'s' if count > 1 else ''})" for kind, count in kinds.items()]
    return found


# ----------------------------------------------------------------------------------------------------------
# the ranks together


def _barrier(ctx: ParallelContext) -> None:
    if ctx.world_size > 1:
        dist.barrier()


class _NoRoom(SaveError):
    """The file system has no room for the save (`_check_room`); nothing was written."""

    def __init__(self, need: int, free: int):
        super().__init__(f"{need} bytes needed, {free} free")
        self.need, self.free = need, free


def _check_room(state: dict, tmp: Path, ctx: ParallelContext) -> None:
    """Before a byte is written: what every rank writes together (or the previous checkpoint's size, when more)
    against the least free space any rank sees. Raises _NoRoom on every rank alike."""
    total = torch.tensor([float(bytes_to_write(state))], dtype=torch.float64, device=ctx.device)
    # the least free space any rank sees (as the most negative), the previous checkpoint's size (rank 0 reads it)
    most = torch.tensor(
        [-float(free_bytes(tmp)), float(latest_bytes(tmp.parent) if ctx.is_main else 0)],
        dtype=torch.float64,
        device=ctx.device,
    )
    if ctx.world_size > 1:
        dist.all_reduce(total)
        dist.all_reduce(most, op=dist.ReduceOp.MAX)
    need = room_needed(int(total.item()), previous=int(most[1].item()))
    free = int(-most[0].item())
    if free < need:
        raise _NoRoom(need, free)


def _together(ctx: ParallelContext, where: Path, what: str, tmp: Path, stage) -> None:
    """Run one stage of a save on every rank, then agree: if it failed on any rank, rank 0 removes `tmp` and every
    rank raises the same SaveError (a refused write or no space, worded by `failures`); an error that is not the
    file system's (a bug) keeps its own type and traceback on the rank that raised it."""
    error: BaseException | None = None
    try:
        stage()
    except (Exception, CheckpointException) as exc:  # torch's CheckpointException is a BaseException
        error = exc
    no_room = isinstance(error, _NoRoom)  # already agreed on by every rank
    failed, out_of_space = _any_rank(
        ctx, error is not None, error is not None and not no_room and is_out_of_space(error, where)
    )
    if not failed:
        return
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    _barrier(ctx)
    if no_room:
        raise SaveError(no_room_message(where, what, error.need, error.free))
    if error is not None and not out_of_space and not is_refused_write(error):
        raise error  # not the file system: a bug, keep its traceback
    raise SaveError(failure_message(error, out_of_space, where, what)) from error


def _any_rank(ctx: ParallelContext, *flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over every rank of the world (one all-reduce); the flags themselves in a world of one."""
    if ctx.world_size == 1:
        return tuple(bool(f) for f in flags)
    values = torch.tensor([float(f) for f in flags], device=ctx.device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in values.tolist())


# ----------------------------------------------------------------------------------------------------------
# RNG states: one object per rank, keyed by its (pp, tp, dp) coordinates


def _rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": {name: state.clone() for name, state in tensor_parallel.get_cuda_rng_tracker().get_states().items()},
    }


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if state.get("tracker"):
        tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded_object(ctx: ParallelContext, data) -> ShardedObject:
    """One object per rank: global shape (pp, tp, dp), this rank at (pp_rank, tp_rank, dp_rank)."""
    return ShardedObject(RNG_KEY, data, (ctx.pp, ctx.tp, ctx.dp), (ctx.pp_rank, ctx.tp_rank, ctx.dp_rank), replica_id=0)


# ----------------------------------------------------------------------------------------------------------
# what a checkpoint holds, and whether it fits the model


def _sharded_state(model: torch.nn.Module, optimizer, *, is_loading: bool) -> dict:
    model_state = model.sharded_state_dict()
    state = {"model": model_state}
    if optimizer is not None:
        # fully_reshardable: optimizer state in the canonical per-parameter form, so a run saved at one tp/pp/dp
        # resumes at another (the distributed optimizer gathers it on DP rank 0 while saving).
        state["optimizer"] = optimizer.sharded_state_dict(
            model_state, is_loading=is_loading, metadata={"distrib_optim_sharding_type": "fully_reshardable"}
        )
    return state


def _match_checkpoint_keys(state: dict, directory: Path, is_main: bool) -> set[str]:
    """Check that the checkpoint has every model tensor `state` asks for, before anything is read; drop from `state`
    the Transformer Engine `_extra_state` entries it lacks and return their state dict names (what the model's
    load_state_dict will find missing).

    A checkpoint written with the local layer spec (conversion, CPU runs) has no `_extra_state` for the modules only
    TE gives one (its fused attention and norms; FP8 bookkeeping that starts empty): those are tolerated. Any other
    key it lacks means another architecture, and the load is refused with the keys named."""
    saved_keys = {item.key for item in load_sharded_metadata(str(directory)).values()}
    absent = {
        value.key
        for _, value in _flatten(state["model"])
        if isinstance(value, ShardedBase) and value.key not in saved_keys
    }
    other = sorted(key for key in absent if not key.endswith(EXTRA_STATE_SUFFIX))
    if other:
        raise CheckpointError(
            f"{directory} lacks {len(other)} tensor(s) the model has, e.g. {', '.join(other[:4])}: "
            f"it holds another architecture than the model's. Compare the `model` section of "
            f"{directory / META_FILE} with the config."
        )
    if not absent:
        return set()
    dropped, kept = extract_matching_values(state, lambda v: isinstance(v, ShardedBase) and v.key in absent)
    state.clear()
    state.update(kept)
    if is_main:
        log.info(
            "%s has no %s (saved without Transformer Engine); they keep their initial values",
            directory,
            ", ".join(sorted(absent)),
        )
    return {name.removeprefix("model.") for name, _ in _flatten(dropped)}


def _flatten(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted name, leaf) of a nested state dict."""
    items = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        items += _flatten(value, name + ".") if isinstance(value, dict) else [(name, value)]
    return items


def _dist_load(state: dict, directory: Path, group) -> dict:
    """dist_checkpointing.load, split across `group` (ranks holding the same shards each read a part and exchange
    it; None: every rank reads what it needs), under LOAD_TIMEOUT for `group` and the default group."""
    strategy = None
    if group is not None and dist.get_world_size(group) > 1:
        strategy = FullyParallelLoadStrategyWrapper(get_default_load_sharded_strategy(str(directory)), group)
    try:
        with overrides.collective_timeout([group, None], LOAD_TIMEOUT):
            return dist_checkpointing.load(state, str(directory), sharded_strategy=strategy)
    except (Exception, CheckpointException) as exc:  # many types (torch's is a BaseException): name the checkpoint
        hint = (
            choose_another_hint(directory.parent, exclude=directory)
            if (directory.parent / LATEST_FILE).is_file()
            else "Resume from an earlier iteration."
        )
        raise CheckpointError(
            f"could not load {directory}: {type(exc).__name__}: {exc}. The checkpoint may be "
            f"truncated or corrupted, or was saved from a different architecture (fix the model "
            f"config: {directory / META_FILE} has the saved architecture). {hint}"
        ) from exc


def _load_model_state(model: torch.nn.Module, loaded: dict, absent_extra_state: set[str], where: Path) -> None:
    """`model.load_state_dict`, strict except for the `_extra_state` entries the checkpoint lacks."""
    result = model.load_state_dict(loaded, strict=False)
    missing = set(result.missing_keys) - absent_extra_state
    if missing or result.unexpected_keys:
        raise CheckpointError(
            f"{where} does not fit the model: missing {sorted(missing)[:5]}, unexpected "
            f"{sorted(result.unexpected_keys)[:5]}."
        )


# ----------------------------------------------------------------------------------------------------------
# load


def load_model_weights(model: torch.nn.Module, path: str | Path, *, group) -> CheckpointMeta:
    """Load a GPTModel stage's weights from a taidtron checkpoint, whatever tp/pp it was saved with. Embedding and
    output rows beyond the saved padded vocabulary are zero; rows beyond the model's are dropped.

    `group`: the ranks that load the same shards (the data-parallel group) split the reading; None: each rank
    reads all it needs. Every rank of the default group calls this."""
    directory = resolve_iteration_dir(path)
    meta = verify_checkpoint(directory)
    check_architecture(model, meta, directory)
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    with overrides.collective_timeout([None], LOAD_TIMEOUT):
        verify_contents_together(directory, meta, rank, world_size)
    # Nested as saved: dist_checkpointing merges the checkpoint's common (non-tensor) state, e.g. the optimizer's
    # param groups of a training checkpoint, into the top level of what it returns.
    state = _sharded_state(model, None, is_loading=True)
    absent = _match_checkpoint_keys(state, directory, is_main=rank == 0)
    loaded = _dist_load(state, directory, group)
    _load_model_state(model, loaded["model"], absent, directory)
    return meta


def load_checkpoint(
    path: str | Path, *, model: torch.nn.Module, optimizer=None, ctx: ParallelContext
) -> CheckpointMeta:
    """Load model (+ optimizer) from a checkpoint saved at any tp/pp; returns its metadata. RNG states are restored
    when the checkpoint was saved with this run's tp/pp/dp layout, else skipped with a logged note. The data-parallel
    ranks, which load the same shards, split the reading. Every rank of the world calls this."""
    directory = resolve_iteration_dir(path)
    meta = verify_checkpoint(directory)
    check_architecture(model, meta, directory)
    if optimizer is not None and not (meta.has_optimizer and meta.trainer is not None):
        raise CheckpointError(
            f"{directory} holds no optimizer or trainer state ({meta.source.description}); use it "
            f"as student.init to start a new run instead of resuming from it."
        )
    saved_padded = meta.padded_vocab_size
    if optimizer is not None and getattr(model, "vocab_size", saved_padded) != saved_padded:
        raise CheckpointError(
            f"{directory} was saved with a padded vocabulary of {saved_padded} rows and this run "
            f"pads to {model.vocab_size} (a multiple of 128 * parallel.tp): the optimizer state "
            f"of the embedding cannot be resharded across that change. Resume with a "
            f"parallel.tp that pads to {saved_padded}, or start a new run with "
            f"student.init={directory}."
        )
    with overrides.collective_timeout([None], LOAD_TIMEOUT):
        verify_contents_together(directory, meta, ctx.rank, ctx.world_size)
    if optimizer is not None:
        overrides.materialize_optimizer_state(optimizer)
    state = _sharded_state(model, optimizer, is_loading=True)
    absent = _match_checkpoint_keys(state, directory, ctx.is_main)
    restore_rng = meta.has_rng and (meta.layout.tp, meta.layout.pp, meta.layout.dp) == (ctx.tp, ctx.pp, ctx.dp)
    if restore_rng:
        state[RNG_KEY] = _rng_sharded_object(ctx, None)
    elif meta.has_rng and ctx.is_main:
        log.warning(
            "RNG states not restored: %s was saved at tp=%s pp=%s dp=%s and this run is tp=%s pp=%s dp=%s "
            "(per-rank random streams do not reshard; weights, optimizer and schedules are restored)",
            directory,
            meta.layout.tp,
            meta.layout.pp,
            meta.layout.dp,
            ctx.tp,
            ctx.pp,
            ctx.dp,
        )
    loaded = _dist_load(state, directory, ctx.dp_group)
    _load_model_state(model, loaded["model"], absent, directory)
    if optimizer is not None:
        # DistributedOptimizer.load_state_dict copies into fp32 parameters in place: autograd must be off.
        with torch.no_grad():
            overrides.load_optimizer_state(optimizer, loaded["optimizer"])
    if restore_rng:
        _set_rng_state(loaded[RNG_KEY])
    return meta
