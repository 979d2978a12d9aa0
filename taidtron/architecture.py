"""Model sections that take their architecture from their `init` checkpoint.

    student:
      init: ckpt/qwen2-1.5b        # all a section needs: the rest is in ckpt/qwen2-1.5b/taidtron.json

`load_config` calls `resolve_architectures` on the merged YAML and command-line tree, before the config is built
and validated (once, by the dataclasses) and before any process group exists. In a section whose `init` names an
existing checkpoint, every architecture key (`ModelConfig.RECORDED_FIELDS`) the section leaves out, or sets to
null, is filled in from the `model` record of the checkpoint's taidtron.json; a key the section does set must equal
the checkpoint's, else the config is refused naming both values. The resolved tree is the one a user would write
out in full, so the saved run config, the banner and a resume's comparison see no difference between the two.

Only the sections the run builds are resolved (no teacher for `taid.loss=lm`). A section whose `init` does not exist
yet (a teacher a pretraining run is about to write, a cluster path `tools/plan.py` cannot see) is left as written
when it sets architecture keys of its own, and refused when it sets none; the run checks the checkpoint when it
loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import get_type_hints

from taidtron.config import ROLES, ConfigError, ModelConfig, TAIDConfig
from taidtron.schema import Reader

ARCHITECTURE_KEYS = ModelConfig.RECORDED_FIELDS
"""The keys a checkpoint records and an `init` section may leave out."""


def resolve_architectures(tree: dict, reader: Reader) -> None:
    """Fill in, in place, the architecture keys of each built model section of `tree` (a config as nested dicts)
    from its `init` checkpoint; `reader` reads the values the user wrote as the config does. Raises ConfigError."""
    for role in ROLES:
        section = tree.get(role)
        if isinstance(section, dict) and (role == "student" or _needs_teacher(tree)):
            _resolve(role, section, reader)


def _needs_teacher(tree: dict) -> bool:
    taid = tree.get("taid")
    loss = taid.get("loss", TAIDConfig.loss) if isinstance(taid, dict) else TAIDConfig.loss
    from taidtron.losses.objective import OBJECTIVES, objective_needs_teacher

    return loss not in OBJECTIVES or objective_needs_teacher(loss)  # an unknown loss is refused when the tree is built


def _resolve(role: str, section: dict, reader: Reader) -> None:
    hints = get_type_hints(ModelConfig)
    init = reader.read(section.get("init"), hints["init"], f"{role}.init")
    if init is None:
        return
    written = {}  # the architecture keys the section sets, read as the config reads them; null means unset
    for key in ARCHITECTURE_KEYS:
        if section.get(key) is not None:
            value = reader.read(section[key], hints[key], f"{role}.{key}")
            if value is not None:
                written[key] = value
    if not Path(init).exists():
        if written:
            return
        raise ConfigError(
            f"{role}.init={init} does not exist, and the {role} section sets no architecture key to build the model "
            f"from; point {role}.init at a taidtron checkpoint (`tools/convert.py import` makes one from Hugging "
            f"Face weights) or write the architecture out in the {role} section."
        )
    from taidtron.checkpoint import CheckpointError, read_meta

    try:
        saved = read_meta(init).model
    except CheckpointError as exc:
        raise ConfigError(f"{role}.init={init}: {exc}") from None
    conflicts = [(key, value, getattr(saved, key)) for key, value in written.items() if value != getattr(saved, key)]
    if conflicts:
        keys = ", ".join(f"{role}.{key}" for key, _, _ in conflicts)
        raise ConfigError(
            f"the {role} section contradicts the architecture of its checkpoint {role}.init={init}: "
            + "; ".join(f"{role}.{key}={value!r} but the checkpoint has {want!r}" for key, value, want in conflicts)
            + f". Remove {keys} from the config (the {role} section then takes the checkpoint's), or point "
            f"{role}.init at a checkpoint of the architecture you set."
        )
    for key in ARCHITECTURE_KEYS:
        if key not in written:
            section[key] = getattr(saved, key)
