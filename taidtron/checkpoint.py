"""Checkpoints on megatron-core dist_checkpointing: layout-independent (save at one tp/pp, load at another).

Layout of a checkpoint directory:

    CKPT_DIR/
      latest                 name of the newest complete iteration directory, written last
      iter_0000100/          one dist_checkpointing directory (torch_dist format)
        .metadata            DCP index: every tensor's global shape and where its bytes are
        __<rank>_<n>.distcp  tensor bytes (model, optimizer) and per-rank RNG states
        common.pt            optimizer param groups (non-sharded state)
        metadata.json        dist_checkpointing format marker
        taidtron.json        step, TAID state, data position, config, model architecture, teacher source, the
                             file manifest (name -> size) and the parallel layout it was saved with

A directory made by `tools/convert.py import` is a single iteration directory with no optimizer state; anything
that takes a checkpoint path accepts either the top directory (it follows `latest`) or an iteration directory.

Completeness: an iteration directory is written under a hidden temporary name and renamed into place only when
every rank has finished and `taidtron.json` (written last, with the manifest) is in it; `latest` moves after the
rename. Loading first checks the manifest (every file present, exact size) and the DCP index (every byte range it
names lies inside its file), then the architecture, and only then reads tensors; any failure is a
`CheckpointError` naming the file and what to do, never a partial load.

RNG states (Python, NumPy, torch CPU, CUDA when present, megatron's model-parallel tracker) are saved per rank as
a ShardedObject keyed by (pp, tp, dp) rank. They are restored when the checkpoint is loaded with the same layout
and skipped, with a logged note, when the layout changed (the streams are per rank and do not reshard).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

import torch

from taidtron import overrides

META_FILE = "taidtron.json"
LATEST_FILE = "latest"
FORMAT_VERSION = 1
RNG_KEY = "rng_state"

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not fit the model."""


# ----------------------------------------------------------------------------------------------------------
# finding and checking checkpoints (no process group needed)


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
            hint = (f"the complete iterations there are {', '.join(earlier)}; point to one explicitly or fix "
                    f"{latest}" if earlier else "no complete iteration is left there")
            raise CheckpointError(f"{latest} names {name!r}, which is missing or incomplete (no {META_FILE}); "
                                  f"{hint}.")
        return target
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; check the path (a directory made by training or "
                              f"by `tools/convert.py import`).")
    raise CheckpointError(f"{path} is not a taidtron checkpoint: it has neither {META_FILE} nor a `{LATEST_FILE}` "
                          f"marker. Convert Hugging Face weights with `python tools/convert.py import`.")


def read_meta(path: str | Path) -> dict:
    directory = resolve_iteration_dir(path)
    file = directory / META_FILE
    try:
        meta = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{file} is unreadable or corrupted ({exc}); the checkpoint cannot be trusted. Resume "
                              f"from an earlier iteration directory.") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file} does not hold a JSON object; the checkpoint is corrupted.")
    return meta


def _scan_files(directory: Path) -> dict[str, int]:
    """name -> size of every file a checkpoint directory holds besides taidtron.json."""
    return {str(p.relative_to(directory)): p.stat().st_size
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != META_FILE}


def verify_checkpoint(path: str | Path) -> dict:
    """Check that a checkpoint is complete before anything is read from it; returns its metadata.

    1. taidtron.json parses; every file of its manifest exists with exactly the recorded size;
    2. the DCP index (.metadata) unpickles, and every byte range it lists lies inside an existing file.
    Raises CheckpointError naming the first problem found.
    """
    directory = resolve_iteration_dir(path)
    meta = read_meta(directory)
    for name, size in sorted((meta.get("files") or {}).items()):
        file = directory / name
        if not file.is_file():
            raise CheckpointError(f"{directory} is incomplete: {name} is missing (the manifest in {META_FILE} lists "
                                  f"it). Resume from an earlier iteration or re-create the checkpoint.")
        actual = file.stat().st_size
        if actual != size:
            raise CheckpointError(f"{file} is {'truncated' if actual < size else 'altered'}: {actual} bytes, "
                                  f"{size} when it was written. Resume from an earlier iteration or re-create the "
                                  f"checkpoint.")
    _verify_dcp_extents(directory)
    return meta


def _verify_dcp_extents(directory: Path) -> None:
    from torch.distributed.checkpoint import FileSystemReader

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
            raise CheckpointError(f"{directory} is incomplete: {name} is missing (the dist_checkpointing index "
                                  f"needs it).")
        if file.stat().st_size < end:
            raise CheckpointError(f"{file} is truncated: {file.stat().st_size} bytes, the dist_checkpointing index "
                                  f"needs {end}.")


def describe_source(path: str | Path) -> dict:
    """Where a (teacher) checkpoint came from and a hash of its content, recorded so that a resume can tell whether
    the teacher changed under it. The hash covers the checkpoint's content id (a hash of the weights for imports,
    a unique id for each training save) and its file manifest, so it is cheap to compute for a 72B teacher and
    survives moving or copying the directory."""
    directory = resolve_iteration_dir(path)
    meta = read_meta(directory)
    digest = hashlib.sha256()
    digest.update(str(meta.get("content_id", "")).encode())
    for name, size in sorted((meta.get("files") or _scan_files(directory)).items()):
        digest.update(f"{name}:{size}\n".encode())
    return {"path": str(directory.resolve()), "hash": digest.hexdigest()}


def check_teacher_unchanged(saved: dict | None, current: dict | None) -> None:
    """A run resumes only with the teacher it started with (same content hash; a moved copy is fine)."""
    if saved is None and current is None:
        return
    if saved is None or current is None or saved.get("hash") != current.get("hash"):
        raise CheckpointError(f"the teacher changed since the checkpoint was written: checkpoint used {saved}, this "
                              f"run has {current}. Resume with the original teacher.init, or start a new run "
                              f"directory (checkpoint.dir) for a new teacher.")
    if saved.get("path") != current.get("path") and _is_main():
        log.warning("teacher checkpoint moved from %s to %s (same content); continuing", saved.get("path"),
                    current.get("path"))


def iteration_name(step: int) -> str:
    return f"iter_{step:07d}"


def find_latest(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under `ckpt_dir`, or None when there is none yet."""
    ckpt_dir = Path(ckpt_dir)
    if not (ckpt_dir / LATEST_FILE).is_file():
        return None
    return resolve_iteration_dir(ckpt_dir)


# ----------------------------------------------------------------------------------------------------------
# process-group helpers


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def _is_main() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def _layout() -> dict:
    """This run's parallel layout and this rank's coordinates in it (pp, tp, dp)."""
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return {"tp": 1, "pp": 1, "dp": 1, "tp_rank": 0, "pp_rank": 0, "dp_rank": 0}
    return {"tp": ps.get_tensor_model_parallel_world_size(), "pp": ps.get_pipeline_model_parallel_world_size(),
            "dp": ps.get_data_parallel_world_size(), "tp_rank": ps.get_tensor_model_parallel_rank(),
            "pp_rank": ps.get_pipeline_model_parallel_rank(), "dp_rank": ps.get_data_parallel_rank()}


def _same_layout(saved: dict | None, current: dict) -> bool:
    return bool(saved) and all(saved.get(k) == current[k] for k in ("tp", "pp", "dp"))


# ----------------------------------------------------------------------------------------------------------
# RNG states


def _rng_state() -> dict:
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": {name: state.clone() for name, state in tensor_parallel.get_cuda_rng_tracker().get_states().items()},
    }


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    if state.get("tracker"):
        tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded_object(layout: dict, data):
    """One object per rank: global shape (pp, tp, dp), this rank at (pp_rank, tp_rank, dp_rank)."""
    from megatron.core.dist_checkpointing.mapping import ShardedObject

    return ShardedObject(RNG_KEY, data, (layout["pp"], layout["tp"], layout["dp"]),
                         (layout["pp_rank"], layout["tp_rank"], layout["dp_rank"]), replica_id=0)


# ----------------------------------------------------------------------------------------------------------
# architecture check


def check_architecture(model: torch.nn.Module, meta: dict, where: Path) -> None:
    """The checkpoint's architecture (meta["model"], a ModelConfig dict) must be the model's, else the load would
    fail deep inside dist_checkpointing, or worse succeed with a wrong RoPE base or norm epsilon."""
    saved = meta.get("model")
    config = getattr(model, "config", None)
    if not saved or config is None:
        return
    current = {
        "num_layers": config.num_layers, "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads, "num_query_groups": config.num_query_groups,
        "ffn_hidden_size": config.ffn_hidden_size, "add_qkv_bias": bool(config.add_qkv_bias),
        "norm_epsilon": config.layernorm_epsilon,
        "tie_embeddings": bool(getattr(model, "share_embeddings_and_output_weights", saved.get("tie_embeddings"))),
    }
    if hasattr(model, "rotary_base"):
        current["rotary_base"] = float(model.rotary_base)
    diffs = []
    for key, value in current.items():
        if key not in saved:
            continue
        want = saved[key]
        same = abs(float(want) - float(value)) <= 1e-12 * max(1.0, abs(float(want))) \
            if isinstance(value, float) else want == value
        if not same:
            diffs.append(f"{key}: checkpoint {want!r}, model {value!r}")
    padded = getattr(model, "vocab_size", None)
    if padded is not None and saved.get("vocab_size") and padded < int(saved["vocab_size"]):
        diffs.append(f"vocab_size: checkpoint {saved['vocab_size']}, model's padded vocabulary only {padded}")
    if diffs:
        raise CheckpointError(f"{where} holds a different architecture than the model it is loaded into ("
                              + "; ".join(diffs) + f"). Copy the `model` section of {where / META_FILE} into the "
                              f"student/teacher section of the config (tools/convert.py import prints it).")


# ----------------------------------------------------------------------------------------------------------
# save


def _sharded_state(model: torch.nn.Module, optimizer, *, is_loading: bool) -> dict:
    model_state = model.sharded_state_dict()
    state = {"model": model_state}
    if optimizer is not None:
        # fully_reshardable: optimizer state in the canonical per-parameter form, so a run saved at one tp/pp/dp
        # resumes at another (the distributed optimizer gathers it on DP rank 0 while saving).
        state["optimizer"] = optimizer.sharded_state_dict(
            model_state, is_loading=is_loading, metadata={"distrib_optim_sharding_type": "fully_reshardable"})
    return state


def _write_text(path: Path, text: str) -> None:
    """Write then fsync then rename: the file is either the old one or the complete new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _write_iteration(tmp: Path, *, model, optimizer, meta: dict, save_rng: bool) -> None:
    """All ranks: write model (+ optimizer, + RNG) into `tmp`, then rank 0 adds taidtron.json with the manifest."""
    from megatron.core import dist_checkpointing

    layout = _layout()
    if optimizer is not None and any(len(getattr(getattr(sub, "optimizer", None), "state", {"": 0})) == 0
                                     for sub in getattr(optimizer, "chained_optimizers", [optimizer])):
        # megatron's DistributedOptimizer.state_dict() asserts on Adam state that only exists after a step.
        raise CheckpointError("the optimizer has taken no step yet, so it has no state to save; save after the "
                              "first optimizer step (or save the model alone).")
    state = _sharded_state(model, optimizer, is_loading=False)
    if save_rng:
        state[RNG_KEY] = _rng_sharded_object(layout, _rng_state())
    dist_checkpointing.save(state, str(tmp))
    _barrier()  # every rank's files are closed before rank 0 lists them
    if _is_main():
        meta = dict(meta)
        meta.update(
            format_version=FORMAT_VERSION,
            content_id=meta.get("content_id") or uuid.uuid4().hex,
            saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            layout={k: layout[k] for k in ("tp", "pp", "dp")},
            has_rng=save_rng,
            files=_scan_files(tmp),
        )
        _write_text(tmp / META_FILE, json.dumps(meta, indent=1, sort_keys=True, default=str))


def replace_dir(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`; an existing `dst` (directory or file) is moved aside first and removed only after."""
    old = dst.with_name(f".old_{dst.name}")
    _remove(old)  # left by an earlier interrupted replace
    if dst.exists():
        dst.rename(old)
    src.rename(dst)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def save_checkpoint(ckpt_dir: str | Path, step: int, *, model: torch.nn.Module, optimizer=None, meta: dict,
                    keep_last: int = 0) -> Path:
    """Save model (+ optimizer, + per-rank RNG states when training) under ckpt_dir/iter_<step>. All ranks call it.

    Atomic: everything is written to a hidden temporary directory, renamed into place when complete, and only then
    is `latest` updated (itself via rename). A crash at any point leaves the previous checkpoint as `latest`.
    `keep_last` > 0 then removes all but the newest `keep_last` iteration directories (never the one just written).
    """
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / iteration_name(step)
    tmp = ckpt_dir / f".tmp_{final.name}"
    if _is_main():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    _write_iteration(tmp, model=model, optimizer=optimizer, meta=meta, save_rng=optimizer is not None)
    if _is_main():
        replace_dir(tmp, final)  # a re-save of the same step (e.g. a signal right after a periodic save)
        _write_text(ckpt_dir / LATEST_FILE, final.name)
        for stale in ckpt_dir.glob(".tmp_iter_*"):  # left by a crashed save of this run
            shutil.rmtree(stale, ignore_errors=True)
        if keep_last > 0:
            iterations = sorted((p for p in ckpt_dir.glob("iter_*") if p.is_dir() and p != final),
                                key=lambda p: p.name)
            for old in iterations[: max(0, len(iterations) - (keep_last - 1))]:
                shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def save_model(directory: str | Path, *, model: torch.nn.Module, meta: dict, overwrite: bool = False) -> Path:
    """Write a single iteration directory holding only model weights (what `tools/convert.py import` makes), with
    the same atomicity as `save_checkpoint`: a hidden sibling is written and renamed to `directory` at the end."""
    directory = Path(directory)
    tmp = directory.with_name(f".tmp_{directory.name}")
    if _is_main():
        if directory.exists() and any(directory.iterdir()) and not overwrite:
            raise CheckpointError(f"{directory} exists and is not empty; choose another directory or overwrite it.")
        directory.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    _write_iteration(tmp, model=model, optimizer=None, meta={**meta, "has_optimizer": False}, save_rng=False)
    if _is_main():
        replace_dir(tmp, directory)
    _barrier()
    return directory


# ----------------------------------------------------------------------------------------------------------
# load


def _dist_load(state: dict, directory: Path) -> dict:
    from megatron.core import dist_checkpointing

    try:
        return dist_checkpointing.load(state, str(directory))
    except Exception as exc:  # dist_checkpointing raises many types; name the checkpoint and the likely cause
        raise CheckpointError(f"could not load {directory}: {type(exc).__name__}: {exc}. The checkpoint may be "
                              f"truncated or corrupted, or was saved from a different architecture; resume from an "
                              f"earlier iteration or fix the model config ({directory / META_FILE} has the saved "
                              f"architecture).") from exc


def load_model_weights(model: torch.nn.Module, path: str | Path) -> dict:
    """Load a GPTModel stage's weights from a taidtron checkpoint, whatever tp/pp it was saved with. Embedding and
    output rows beyond the saved padded vocabulary are zero; rows beyond the model's are dropped."""
    directory = resolve_iteration_dir(path)
    meta = verify_checkpoint(directory)
    check_architecture(model, meta, directory)
    # Nested as saved: dist_checkpointing merges the checkpoint's common (non-tensor) state, e.g. the optimizer's
    # param groups of a training checkpoint, into the top level of what it returns.
    loaded = _dist_load(_sharded_state(model, None, is_loading=True), directory)
    model.load_state_dict(loaded["model"], strict=True)
    return meta


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer=None) -> dict:
    """Load model (+ optimizer) from a checkpoint saved at any tp/pp; returns its metadata. RNG states are restored
    when the checkpoint was saved with this run's tp/pp/dp layout, else skipped with a logged note."""
    directory = resolve_iteration_dir(path)
    meta = verify_checkpoint(directory)
    check_architecture(model, meta, directory)
    if optimizer is not None and not meta.get("has_optimizer", False):
        raise CheckpointError(f"{directory} holds no optimizer state (made by `tools/convert.py import`?); use it "
                              f"as student.init to start a new run instead of resuming from it.")
    saved_padded = meta.get("padded_vocab_size")
    if optimizer is not None and saved_padded and getattr(model, "vocab_size", saved_padded) != saved_padded:
        raise CheckpointError(f"{directory} was saved with a padded vocabulary of {saved_padded} rows and this run "
                              f"pads to {model.vocab_size} (a multiple of 128 * parallel.tp): the optimizer state "
                              f"of the embedding cannot be resharded across that change. Resume with a "
                              f"parallel.tp that pads to {saved_padded}, or start a new run with "
                              f"student.init={directory}.")
    if optimizer is not None:
        overrides.materialize_optimizer_state(optimizer)
    state = _sharded_state(model, optimizer, is_loading=True)
    layout = _layout()
    restore_rng = meta.get("has_rng", False) and _same_layout(meta.get("layout"), layout)
    if restore_rng:
        state[RNG_KEY] = _rng_sharded_object(layout, None)
    elif meta.get("has_rng", False) and _is_main():
        log.warning("RNG states not restored: %s was saved at tp=%s pp=%s dp=%s and this run is tp=%s pp=%s dp=%s "
                    "(per-rank random streams do not reshard; weights, optimizer and schedules are restored)",
                    directory, *(meta["layout"].get(k) for k in ("tp", "pp", "dp")), layout["tp"], layout["pp"],
                    layout["dp"])
    loaded = _dist_load(state, directory)
    model.load_state_dict(loaded["model"], strict=True)
    if optimizer is not None:
        # DistributedOptimizer.load_state_dict copies into fp32 parameters in place: autograd must be off.
        with torch.no_grad():
            overrides.load_optimizer_state(optimizer, loaded["optimizer"])
    if restore_rng:
        _set_rng_state(loaded[RNG_KEY])
    return meta
