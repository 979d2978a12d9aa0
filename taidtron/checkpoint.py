"""Checkpoints on megatron-core dist_checkpointing: layout-independent (save at one tp/pp, load at another).

Layout of a checkpoint directory:

    CKPT_DIR/
      latest                 name of the newest complete iteration directory, written last
      iter_0000100/          one dist_checkpointing directory (model, and optimizer when training)
        taidtron.json        step, TAID state, data position, config, model architecture, teacher source

A directory made by `tools/convert.py import` is a single iteration directory with no optimizer state; anything
that takes a checkpoint path accepts either the top directory (it follows `latest`) or an iteration directory.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import torch

META_FILE = "taidtron.json"
LATEST_FILE = "latest"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not fit the model."""


def resolve_iteration_dir(path: str | Path) -> Path:
    """`path` itself when it is an iteration directory, else the one its `latest` marker names."""
    path = Path(path)
    if (path / META_FILE).is_file():
        return path
    latest = path / LATEST_FILE
    if latest.is_file():
        target = path / latest.read_text().strip()
        if not (target / META_FILE).is_file():
            raise CheckpointError(f"{latest} names {target.name}, which is missing or incomplete (no {META_FILE}); "
                                  f"point to an earlier iteration directory under {path} explicitly.")
        return target
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path (a directory made by training or "
                              f"by `tools/convert.py import`).")
    raise CheckpointError(f"{path} is not a taidtron checkpoint: it has neither {META_FILE} nor a `{LATEST_FILE}` "
                          f"marker. Convert Hugging Face weights with `python tools/convert.py import`.")


def read_meta(path: str | Path) -> dict:
    return json.loads((resolve_iteration_dir(path) / META_FILE).read_text())


def describe_source(path: str | Path) -> dict:
    """Where a (teacher) checkpoint came from and a hash of its metadata, recorded so a resume can tell whether
    the teacher changed under it."""
    directory = resolve_iteration_dir(path)
    digest = hashlib.sha256()
    for file in sorted(directory.rglob("*")):
        if file.is_file() and file.name != META_FILE:
            digest.update(file.name.encode())
            digest.update(str(file.stat().st_size).encode())
    digest.update((directory / "metadata.json").read_bytes() if (directory / "metadata.json").exists() else b"")
    return {"path": str(directory.resolve()), "hash": digest.hexdigest()}


def load_model_weights(model: torch.nn.Module, path: str | Path) -> dict:
    """Load a GPTModel stage's weights from a taidtron checkpoint, whatever tp/pp it was saved with."""
    from megatron.core import dist_checkpointing

    directory = resolve_iteration_dir(path)
    sharded = model.sharded_state_dict()
    try:
        loaded = dist_checkpointing.load(sharded, str(directory))
    except Exception as exc:  # dist_checkpointing raises many types; name the checkpoint and the likely cause
        raise CheckpointError(f"could not load model weights from {directory}: {exc}. Check that the model "
                              f"section of the config matches the checkpoint's architecture "
                              f"({directory / META_FILE}).") from exc
    model.load_state_dict(loaded, strict=True)
    return read_meta(directory)


def iteration_name(step: int) -> str:
    return f"iter_{step:07d}"


def find_latest(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `ckpt_dir`, or None when there is none yet."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / LATEST_FILE).is_file():
        return None
    return resolve_iteration_dir(ckpt_dir)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def _is_main() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def _sharded_state(model: torch.nn.Module, optimizer, *, is_loading: bool) -> dict:
    model_state = model.sharded_state_dict()
    state = {"model": model_state}
    if optimizer is not None:
        # fully_reshardable: optimizer state in the canonical per-parameter form, so a run saved at one tp/pp/dp
        # resumes at another (the distributed optimizer gathers it on DP rank 0 while saving).
        state["optimizer"] = optimizer.sharded_state_dict(
            model_state, is_loading=is_loading, metadata={"distrib_optim_sharding_type": "fully_reshardable"})
    return state


def save_checkpoint(ckpt_dir: str | Path, step: int, *, model: torch.nn.Module, optimizer=None, meta: dict,
                    keep_last: int = 0) -> Path:
    """Save model (+ optimizer) under ckpt_dir/iter_<step>. All ranks call it.

    Atomic: everything is written to a hidden temporary directory, renamed into place when complete, and only then
    is `latest` updated (itself via rename). A crash at any point leaves the previous checkpoint as `latest`.
    """
    from megatron.core import dist_checkpointing

    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / iteration_name(step)
    tmp = ckpt_dir / f".tmp_{final.name}"
    if _is_main():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    dist_checkpointing.save(_sharded_state(model, optimizer, is_loading=False), str(tmp))
    _barrier()
    if _is_main():
        _atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=1, sort_keys=True, default=str))
        if final.exists():  # a re-save of the same step (e.g. signal right after a periodic save)
            import shutil

            shutil.rmtree(final)
        tmp.rename(final)
        _atomic_write_text(ckpt_dir / LATEST_FILE, final.name)
        if keep_last > 0:
            import shutil

            iterations = sorted(p for p in ckpt_dir.glob("iter_*") if p.is_dir())
            for old in iterations[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def _materialize_optimizer_state(optimizer) -> None:
    """A fresh distributed optimizer has no Adam state (not even `step`) until its first step, and without
    TE/apex megatron's DistributedOptimizer.state_dict() requires it. megatron's own remedy is one step on zero
    grads with placeholder state, which loading then overwrites in place (model weights are reloaded after)."""
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        if hasattr(sub, "_init_optimizer_states_with_dummy_values") and len(sub.optimizer.state) == 0:
            sub._init_optimizer_states_with_dummy_values()


@contextlib.contextmanager
def _tolerate_missing_adam_step(optimizer):
    """megatron-core 0.16.1 without TE/apex (torch Adam): `load_parameter_state_from_fully_reshardable` leaves
    Adam's `step` out of the tensors it copies but copies every key of the destination state, which has `step`,
    so it raises KeyError('step'). `step` is restored from param_groups just before; hand it back unchanged.
    Scoped to this one call on these optimizer instances."""
    patched = []
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]):
        original = getattr(sub, "_set_main_param_and_optimizer_states", None)
        if original is None:
            continue

        def with_step(model_param, tensors, _sub=sub, _original=original):
            group_index, group_order = _sub.model_param_group_index_map[model_param]
            main_param = _sub.optimizer.param_groups[group_index]["params"][group_order]
            state = _sub.optimizer.state[main_param]
            if "step" in state and "step" not in tensors:
                tensors = {**tensors, "step": state["step"]}
            return _original(model_param, tensors)

        sub._set_main_param_and_optimizer_states = with_step
        patched.append(sub)
    try:
        yield
    finally:
        for sub in patched:
            del sub._set_main_param_and_optimizer_states


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer=None) -> dict:
    """Load model (+ optimizer) from a checkpoint saved at any tp/pp; returns its metadata."""
    from megatron.core import dist_checkpointing

    directory = resolve_iteration_dir(path)
    meta = read_meta(directory)
    if optimizer is not None and not meta.get("has_optimizer", False):
        raise CheckpointError(f"{directory} holds no optimizer state (made by `tools/convert.py import`?); use it "
                              f"as student.init to start a new run instead of resuming from it.")
    if optimizer is not None:
        _materialize_optimizer_state(optimizer)
    try:
        loaded = dist_checkpointing.load(_sharded_state(model, optimizer, is_loading=True), str(directory))
    except Exception as exc:
        raise CheckpointError(f"could not load {directory}: {exc}. The checkpoint may be truncated or corrupted, "
                              f"or was saved from a different architecture; resume from an earlier iteration or "
                              f"fix the model config.") from exc
    model.load_state_dict(loaded["model"], strict=True)
    if optimizer is not None:
        # DistributedOptimizer.load_state_dict copies into fp32 parameters in place: autograd must be off.
        with torch.no_grad(), _tolerate_missing_adam_step(optimizer):
            optimizer.load_state_dict(loaded["optimizer"])
    return meta


def check_teacher_unchanged(saved: dict | None, current: dict | None) -> None:
    """A run resumes only with the teacher it started with (same source path and content hash)."""
    if saved is None and current is None:
        return
    if saved != current:
        raise CheckpointError(f"the teacher changed since the checkpoint was written: checkpoint used {saved}, this "
                              f"run has {current}. Resume with the original teacher.init, or start a new run "
                              f"directory (checkpoint.dir) for a new teacher.")
