"""Does a checkpoint fit the model it is loaded into: the architecture recorded in its taidtron.json against the
built model, and its true (unpadded) vocabulary against the config's, both before any weight is read."""

from __future__ import annotations

from pathlib import Path

import torch

from taidtron.checkpoint.meta import CheckpointError, CheckpointMeta
from taidtron.checkpoint.store import META_FILE


def check_architecture(model: torch.nn.Module, meta: CheckpointMeta, where: Path) -> None:
    """The checkpoint's architecture (`meta.model`) must be the model's, else the load would fail deep inside
    dist_checkpointing, or worse succeed with a wrong RoPE base or norm epsilon."""
    saved = meta.model
    config = getattr(model, "config", None)
    if config is None:
        return
    current = {
        "num_layers": config.num_layers,
        "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads,
        "num_query_groups": config.num_query_groups,
        "ffn_hidden_size": config.ffn_hidden_size,
        "add_qkv_bias": bool(config.add_qkv_bias),
        "norm_epsilon": config.layernorm_epsilon,
        "tie_embeddings": bool(getattr(model, "share_embeddings_and_output_weights", saved.tie_embeddings)),
    }
    if hasattr(model, "rotary_base"):
        current["rotary_base"] = float(model.rotary_base)
    diffs = []
    for key, value in current.items():
        want = getattr(saved, key)
        same = (
            abs(float(want) - float(value)) <= 1e-12 * max(1.0, abs(float(want)))
            if isinstance(value, float)
            else want == value
        )
        if not same:
            diffs.append(f"{key}: checkpoint {want!r}, model {value!r}")
    padded = getattr(model, "vocab_size", None)
    if padded is not None and padded < saved.vocab_size:
        diffs.append(f"vocab_size: checkpoint {saved.vocab_size}, model's padded vocabulary only {padded}")
    if diffs:
        raise CheckpointError(
            f"{where} holds a different architecture than the model it is loaded into ("
            + "; ".join(diffs)
            + f"). Copy the `model` section of {where / META_FILE} into the "
            f"student/teacher section of the config (tools/convert.py import prints it)."
        )


def check_vocabulary(meta: CheckpointMeta, vocab_size: int, what: str, key: str) -> None:
    """The checkpoint's true vocabulary (recorded before padding) must be the config's `key` (`teacher.vocab_size`,
    ...): padding is the only difference allowed. Otherwise the rows of the ids one side lacks would be zeros or
    dropped, silently."""
    saved = meta.model.vocab_size
    if saved == vocab_size:
        return
    raise CheckpointError(
        f"{what} holds a model with a vocabulary of {saved} tokens (padded to {meta.padded_vocab_size} rows), but "
        f"{key}={vocab_size}; only the padding may differ. Set {key}={saved} (the `model` section of its "
        f"{META_FILE}, which tools/convert.py import prints), or use a checkpoint of a {vocab_size}-token model."
    )
