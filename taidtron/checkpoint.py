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
