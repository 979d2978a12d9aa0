"""Checkpoints on megatron-core dist_checkpointing: layout-independent (save at one tp/pp, load at another).

Layout of a checkpoint directory:

    CKPT_DIR/
      latest                 name of the newest complete iteration directory, written last
      iter_0000100/          one dist_checkpointing directory (torch_dist format)
        .metadata            DCP index: every tensor's global shape and where its bytes are
        __<rank>_<n>.distcp  tensor bytes (model, optimizer) and per-rank RNG states
        common.pt            optimizer param groups (non-sharded state)
        metadata.json        dist_checkpointing format marker
        taidtron.json        `CheckpointMeta`: architecture, where the weights came from, tokenizer, teacher,
                             trainer state, the file manifest (name -> size) and the parallel layout it was saved
                             with

A directory made by `tools/convert.py import` is a single iteration directory with no optimizer state; anything
that takes a checkpoint path accepts either the top directory (it follows `latest`) or an iteration directory.

Completeness: an iteration directory is written under a hidden temporary name and renamed into place only when
every rank has finished and `taidtron.json` (written last, with the manifest) is in it; `latest` moves after the
rename. Loading first checks `taidtron.json` against its schema, the manifest (every file present, exact size) and
the DCP index (every byte range it names lies inside its file), then the architecture and the tensor keys, and
only then reads tensors; any failure is a `CheckpointError` naming the file and what to do, never a partial load.

Loading at scale: the ranks of the group passed as `group` (the data-parallel group: its ranks need the same
shards) split the reading between them and exchange what they read (megatron-core's fully parallel load), under a
generous collective timeout. Keys a Transformer Engine model has and a local-spec checkpoint lacks (TE's
`_extra_state`, its FP8 bookkeeping) are the only ones a load tolerates missing.

RNG states (Python, NumPy, torch CPU, CUDA when present, megatron's model-parallel tracker) are saved per rank as
a ShardedObject keyed by (pp, tp, dp) rank. They are restored when the checkpoint is loaded with the same layout
and skipped, with a logged note, when the layout changed (the streams are per rank and do not reshard).
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
import types
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import torch

from taidtron import overrides
from taidtron.config import ModelConfig

META_FILE = "taidtron.json"
LATEST_FILE = "latest"
RNG_KEY = "rng_state"
EXTRA_STATE_SUFFIX = "_extra_state"
"""Transformer Engine modules' FP8 bookkeeping in a state dict; the only keys a load tolerates missing."""
LOAD_TIMEOUT = datetime.timedelta(hours=2)
"""Collective timeout while a checkpoint loads: reading a 72B teacher from a shared file system takes minutes."""

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, malformed or does not fit the model."""


class SaveError(CheckpointError):
    """A save that was refused (non-finite state) or failed (e.g. no space left); the previous checkpoint is
    intact and still `latest`."""


# ----------------------------------------------------------------------------------------------------------
# taidtron.json: the schema


FORMAT_VERSION = 2
"""Version of the taidtron.json format written. 1: the dicts written before this schema (read by migration)."""
SOURCE_KINDS = ("training", "pretraining", "hf_import", "init")


@dataclass(frozen=True)
class WeightsSource:
    """Where the saved weights came from."""

    kind: str
    """`training` (a taidtron run), `pretraining` (tools/smoke_test.py's teacher), `hf_import`
    (`tools/convert.py import`) or `init` (a model's initial weights, written by tests)."""
    description: str
    """For people: the run directory, the command or the Hugging Face folder."""
    path: str | None = None
    """The Hugging Face folder of an import (absolute); None otherwise."""
    hf_config: dict | None = None
    """That folder's config.json: the fields taidtron does not model (max_position_embeddings, special token ids),
    which an export writes back. None when the weights are not an import."""

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {', '.join(SOURCE_KINDS)}")


@dataclass(frozen=True)
class TokenizerRef:
    """The tokenizer the weights were trained with."""

    path: str
    """The tokenizer file or folder as the run configured it (absolute when written by this version)."""
    fingerprint: str
    """`Tokenizer.fingerprint()`: equal fingerprints index the same vocabulary."""

    @classmethod
    def of(cls, path: str | Path, fingerprint: str) -> TokenizerRef:
        return cls(path=str(Path(path).resolve()), fingerprint=fingerprint)


@dataclass(frozen=True)
class TeacherSource:
    """The teacher of a distillation run (`teacher.init`), recorded so that a resume refuses another one."""

    path: str
    """The teacher's iteration directory (absolute)."""
    hash: str
    """sha256 of the teacher's content id and file manifest (`describe_source`)."""


@dataclass(frozen=True)
class Layout:
    """The parallel layout a checkpoint was saved with."""

    tp: int
    pp: int
    dp: int


@dataclass(frozen=True)
class CheckpointMeta:
    """taidtron.json: everything about a checkpoint that is not a tensor.

    Writers give the fields up to `config`; `save_checkpoint` / `save_model` fill the rest. `read_meta` validates a
    file against this schema (every field present with its type; format 1 files are migrated on read)."""

    model: ModelConfig
    """Architecture of the saved model (the student of a distillation run)."""
    padded_vocab_size: int
    """Embedding rows as saved: the vocabulary padded to a multiple of 128 * tp."""
    source: WeightsSource
    """Where the weights came from."""
    tokenizer: TokenizerRef | None = None
    """The tokenizer the weights were trained with; None for imports (the HF folder has it) and tests."""
    seq_length: int | None = None
    """Tokens per training sequence; an export's max_position_embeddings when no Hugging Face config is known."""
    teacher: TeacherSource | None = None
    """Distillation runs: the teacher checkpoint; None for other checkpoints and randomly initialised teachers."""
    trainer: dict | None = None
    """Training checkpoints: `Trainer.state_dict()` (step, data position, LR and TAID schedules), opaque here."""
    config: dict | None = None
    """Training checkpoints: the run's whole resolved config (`TrainConfig.to_dict()`), for the record."""
    format_version: int = FORMAT_VERSION
    """Filled by save from here on."""
    step: int = 0
    """Optimizer steps done when saved (the iteration number); 0 for imports."""
    content_id: str = ""
    """A hash of the source weights for imports (equal across re-imports of the same weights), else a unique id."""
    saved_at: str = ""
    """Local time of the save, ISO 8601."""
    params_dtype: str | None = None
    """dtype of the saved model weights (`float32`, `bfloat16`, ...); None in format 1 files that did not say."""
    layout: Layout = Layout(tp=1, pp=1, dp=1)
    """tp, pp, dp of the run that saved."""
    has_optimizer: bool = False
    """Whether optimizer state is saved (resumable), or only weights."""
    has_rng: bool = False
    """Whether per-rank RNG states are saved."""
    files: dict[str, int] = field(default_factory=dict)
    """The manifest: every other file of the iteration directory and its size in bytes (empty in format 1 files
    that predate it; the DCP index check still applies)."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)


MODEL_FIELDS_REQUIRED = (
    "family",
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "ffn_hidden_size",
    "vocab_size",
    "rotary_base",
    "norm_epsilon",
    "add_qkv_bias",
    "tie_embeddings",
)
"""ModelConfig fields a checkpoint must record; fields added to ModelConfig later take their defaults when an
older checkpoint lacks them."""


def _invalid(file: Path, where: str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{file}: `{where}` {problem}. The file is damaged or was not written by taidtron; "
        f"re-create the checkpoint (or resume from an earlier iteration)."
    )


def _type_name(annotation: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "an object"}
    origin = get_origin(annotation) or annotation
    if dataclasses.is_dataclass(origin):
        return "an object"
    return names.get(origin, str(annotation))


def _parse_value(value: Any, annotation: Any, where: str, file: Path) -> Any:
    """`value` from JSON checked against `annotation` (the field's type); raises CheckpointError naming `where`."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):  # X | None
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        annotation, origin, args = inner, get_origin(inner), get_args(inner)
        if value is None:
            raise _invalid(file, where, f"must be {_type_name(annotation)} or null, got null")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise _invalid(file, where, f"must be an object, got {type(value).__name__} {value!r:.80}")
        return _parse_dataclass(annotation, value, where, file)
    expected = origin or annotation
    if expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise _invalid(file, where, f"must be {_type_name(expected)}, got {type(value).__name__} {value!r:.80}")
    if expected is dict and args:
        key_type, value_type = args
        for k, v in value.items():
            _parse_value(v, value_type, f"{where}.{k}", file)
    return value


def _parse_dataclass(cls: type, raw: dict, where: str, file: Path) -> Any:
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    prefix = f"{where}." if where else ""
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise _invalid(file, prefix + unknown[0], "is not a field of this format")
    required = MODEL_FIELDS_REQUIRED if cls is ModelConfig else names
    missing = [name for name in required if name not in raw]
    if missing:
        raise _invalid(file, prefix + missing[0], "is missing")
    kwargs = {name: _parse_value(value, hints[name], prefix + name, file) for name, value in raw.items()}
    try:
        return cls(**kwargs)
    except ValueError as exc:  # the dataclass's own validation (ModelConfig, WeightsSource.kind)
        raise _invalid(file, where or "the root", f"is invalid ({exc})") from None


def _from_format_1(raw: dict, file: Path) -> dict:
    """Format 1, the dicts written before the schema, as format 2 (in memory; the file is not rewritten).

    Format 1 had the same facts under other names: `kind: hf_import` with `source: {path, model_type}` and
    `hf_config` for imports, `source` as a string for tools/smoke_test.py's teacher, `tokenizer_fingerprint` next
    to `config.data.tokenizer`, `teacher_source`, and no step of its own."""
    if "model" not in raw or "padded_vocab_size" not in raw:
        raise CheckpointError(
            f"{file} (format 1) records no model architecture, so the weights cannot be matched to "
            f"a model; it was written by an early test helper. Re-create the checkpoint with this "
            f"taidtron (`tools/convert.py import` for Hugging Face weights, a training run "
            f"otherwise)."
        )
    config = raw.get("config") if isinstance(raw.get("config"), dict) else {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    source = raw.get("source")
    trainer = raw.get("trainer")
    if raw.get("kind") == "hf_import" and isinstance(source, dict):
        weights = {
            "kind": "hf_import",
            "description": f"tools/convert.py import of {source.get('path')}",
            "path": source.get("path"),
            "hf_config": raw.get("hf_config"),
        }
    elif isinstance(source, str):
        weights = {"kind": "pretraining", "description": source, "path": None, "hf_config": None}
    elif trainer is not None:
        weights = {
            "kind": "training",
            "description": "a taidtron training run (format 1)",
            "path": None,
            "hf_config": None,
        }
    else:
        weights = {
            "kind": "init",
            "description": "format 1 checkpoint without a recorded source",
            "path": None,
            "hf_config": None,
        }
    tokenizer = None
    if data.get("tokenizer") and raw.get("tokenizer_fingerprint"):
        tokenizer = {"path": data["tokenizer"], "fingerprint": raw["tokenizer_fingerprint"]}
    if isinstance(trainer, dict) and "step" in trainer:
        step = trainer["step"]
    else:
        match = re.fullmatch(r"iter_(\d+)", file.parent.name)
        step = int(match.group(1)) if match else 0
    return {
        "format_version": FORMAT_VERSION,
        "model": raw["model"],
        "padded_vocab_size": raw["padded_vocab_size"],
        "source": weights,
        "tokenizer": tokenizer,
        "seq_length": data.get("seq_length"),
        "teacher": raw.get("teacher_source"),
        "trainer": trainer,
        "config": raw.get("config"),
        "step": step,
        "content_id": raw.get("content_id", ""),
        "saved_at": raw.get("saved_at", ""),
        "params_dtype": raw.get("params_dtype"),
        "layout": raw.get("layout", {"tp": 1, "pp": 1, "dp": 1}),
        "has_optimizer": raw.get("has_optimizer", False),
        "has_rng": raw.get("has_rng", False),
        "files": raw.get("files", {}),
    }


def parse_meta(raw: Any, file: Path) -> CheckpointMeta:
    """A parsed taidtron.json (`file` names it in errors) as a validated CheckpointMeta."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file} does not hold a JSON object; the checkpoint is corrupted.")
    version = raw.get("format_version")
    if type(version) is int and version == 1:
        raw = _from_format_1(raw, file)
    elif type(version) is not int or version != FORMAT_VERSION:
        what = "has no format_version" if version is None else f"has format_version {version!r}"
        fix = (
            "a newer taidtron wrote it: upgrade taidtron to load it"
            if type(version) is int and version > 1
            else "it was not written by taidtron"
        )
        raise CheckpointError(f"{file} {what}, and this taidtron reads formats 1 and {FORMAT_VERSION}; {fix}.")
    return _parse_dataclass(CheckpointMeta, raw, "", file)


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


def _scan_files(directory: Path) -> dict[str, int]:
    """name -> size of every file a checkpoint directory holds besides taidtron.json."""
    return {
        str(p.relative_to(directory)): p.stat().st_size
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != META_FILE
    }


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
            raise CheckpointError(
                f"{directory} is incomplete: {name} is missing (the dist_checkpointing index needs it)."
            )
        if file.stat().st_size < end:
            raise CheckpointError(
                f"{file} is truncated: {file.stat().st_size} bytes, the dist_checkpointing index needs {end}."
            )


def describe_source(path: str | Path) -> TeacherSource:
    """Where a (teacher) checkpoint came from and a hash of its content, recorded so that a resume can tell whether
    the teacher changed under it. The hash covers the checkpoint's content id (a hash of the weights for imports,
    a unique id for each training save) and its file manifest, so it is cheap to compute for a 72B teacher and
    survives moving or copying the directory."""
    directory = resolve_iteration_dir(path)
    meta = read_meta(directory)
    digest = hashlib.sha256()
    digest.update(meta.content_id.encode())
    for name, size in sorted((meta.files or _scan_files(directory)).items()):
        digest.update(f"{name}:{size}\n".encode())
    return TeacherSource(path=str(directory.resolve()), hash=digest.hexdigest())


def check_teacher_unchanged(saved: TeacherSource | None, current: TeacherSource | None) -> None:
    """A run resumes only with the teacher it started with (same content hash; a moved copy is fine)."""
    if saved is None and current is None:
        return

    def describe(source: TeacherSource | None) -> str:
        return "a randomly initialised teacher" if source is None else f"{source.path} (hash {source.hash[:12]})"

    if saved is None or current is None or saved.hash != current.hash:
        raise CheckpointError(
            f"the teacher changed since the checkpoint was written: checkpoint used "
            f"{describe(saved)}, this run has {describe(current)}. Resume with the original "
            f"teacher.init, or start a new run directory (checkpoint.dir) for a new teacher."
        )
    if saved.path != current.path and _is_main():
        log.warning("teacher checkpoint moved from %s to %s (same content); continuing", saved.path, current.path)


def check_tokenizer(meta: CheckpointMeta, what: str, tokenizer: TokenizerRef) -> None:
    """The checkpoint's weights were trained with the run's tokenizer (equal fingerprints), when it records one
    (Hugging Face imports do not: their folder holds it)."""
    if meta.tokenizer is None or meta.tokenizer.fingerprint == tokenizer.fingerprint:
        return
    raise CheckpointError(
        f"{what} was trained with the tokenizer {meta.tokenizer.path} (fingerprint "
        f"{meta.tokenizer.fingerprint[:12]}), but data.tokenizer is {tokenizer.path} (fingerprint "
        f"{tokenizer.fingerprint[:12]}): the same ids would name other tokens. Set data.tokenizer "
        f"to the tokenizer the checkpoint was trained with, or use a checkpoint trained with this "
        f"one."
    )


# ----------------------------------------------------------------------------------------------------------
# resuming a run: which checkpoint, and what may differ from its config


RESUME_FREE_KEYS = (
    "logging.",
    "checkpoint.",
    "parallel.tp",
    "parallel.pp",
    "parallel.sequence_parallel",
    "parallel.micro_batch_size",
    "parallel.distributed_optimizer",
    "taid.loss_impl",
    "taid.chunk_tokens",
    "data.tokenizer",
    "data.teacher_tokenizer",
    "data.cache_dir",
    "student.init",
    "teacher.init",
    "optim.max_skipped_steps",
)
"""Config keys (a trailing dot: a whole section) a resumed run may change freely: they change how the run is
logged, saved, laid out or computed, not what it trains. The layout reshards on load; the tokenizer is compared by
its fingerprint and the teacher by its content instead of by path."""
RESUME_FROZEN_KEYS = {
    "student.": "the checkpoint holds a student of this architecture",
    "teacher.": "the run distils from this teacher (start a new run for another one)",
    "precision": "the weights and optimizer state were saved in this precision (start a new run with "
    "student.init=<the checkpoint> to change it)",
    "seed": "the random streams are restored from the checkpoint, so a new seed would not take effect",
}
"""Keys a resume cannot change even on purpose, and why. Every other key the checkpoint fixes (optimizer and LR
schedule, TAID, data blend/split/seed/sequence length, global batch size) can be changed by listing it in
`checkpoint.override`."""


def _matches(key: str, patterns) -> str | None:
    return next((p for p in patterns if key == p or (p.endswith(".") and key.startswith(p))), None)


@dataclass(frozen=True)
class ConfigChange:
    """A config key whose value differs from the one the checkpoint was written with."""

    key: str
    saved: Any
    current: Any
    kind: str
    """`free` (applied), `extended` (optim.train_steps raised), `override` (fixed, accepted by checkpoint.override),
    `refused` (fixed, not accepted) or `frozen` (cannot change on resume)."""

    def __str__(self) -> str:
        return f"{self.key} {self.saved!r} -> {self.current!r}"


def compare_configs(saved: dict, current: dict, override: list[str] = ()) -> list[ConfigChange]:
    """Every leaf of two `TrainConfig.to_dict()` trees that differs, classified for a resume (see ConfigChange).
    Keys only one side has (a taidtron version added or removed them) are not compared. The teacher section is
    compared only when both configs train with a teacher."""
    from taidtron.config import flatten_config
    from taidtron.losses import objective_needs_teacher

    old, new = flatten_config(saved), flatten_config(current)
    teacher_matters = all(objective_needs_teacher(str(cfg.get("taid.loss", "taid"))) for cfg in (old, new))
    changes = []
    for key in sorted(set(old) & set(new)):
        if old[key] == new[key] or (key.startswith("teacher.") and not teacher_matters):
            continue
        if key == "optim.train_steps" and new[key] > old[key]:
            kind = "extended"
        elif _matches(key, RESUME_FREE_KEYS):
            kind = "free"
        elif _matches(key, RESUME_FROZEN_KEYS):
            kind = "frozen"
        else:
            kind = "override" if key in override else "refused"
        changes.append(ConfigChange(key, old[key], new[key], kind))
    return changes


@dataclass(frozen=True)
class ResumePlan:
    """What a start resumes from and what it changes (`plan_resume`)."""

    directory: Path
    """The iteration directory to load (verified complete)."""
    meta: CheckpointMeta
    changes: list[ConfigChange]
    """Differences from the checkpoint's config that are applied (kinds free, extended, override)."""
    stretch_schedule: bool
    """Whether the LR and t schedules take the config's optim.train_steps as their horizon (listed in
    checkpoint.override) instead of keeping the checkpoint's."""
    newer: list[str]
    """Iteration directories newer than the one loaded (an abandoned continuation), replaced as the run reaches
    their steps."""

    def describe(self) -> str:
        """One line for the console and the run's config record."""
        parts = [f"resumed from {self.directory} at step {self.meta.step}"]
        for change in self.changes:
            if change.kind == "extended" and not self.stretch_schedule:
                parts.append(
                    f"{change} (run extended; the LR and t schedules keep their {change.saved}-step "
                    f"horizon: later steps run at optim.min_lr and t_end)"
                )
            elif change.kind == "extended":
                parts.append(f"{change} (run extended; the LR and t schedules stretched to {change.current} steps)")
            else:
                parts.append(f"{change}{' (checkpoint.override)' if change.kind == 'override' else ''}")
        if self.newer:
            parts.append(
                f"newer checkpoints {', '.join(self.newer)} are from an abandoned continuation and will be replaced"
            )
        return "; ".join(parts)


def complete_iterations(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, directory) of every iteration in `ckpt_dir` that passes `verify_checkpoint`, newest first."""
    found = []
    for directory in Path(ckpt_dir).glob("iter_*"):
        try:
            found.append((verify_checkpoint(directory).step, directory))
        except CheckpointError:
            continue
    return sorted(found, key=lambda item: item[0], reverse=True)


def _choose_another_hint(ckpt_dir: Path, exclude: Path | None = None) -> str:
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


def _resume_directory(ckpt_dir: Path, load_iteration: int | None) -> Path | None:
    """The verified iteration directory to resume from: `load_iteration`'s, else `latest`'s, else None (no
    `latest`: a fresh start)."""
    if load_iteration is not None:
        directory = ckpt_dir / iteration_name(load_iteration)
        try:
            if not directory.is_dir():
                raise CheckpointError(f"{directory} does not exist")
            verify_checkpoint(directory)
        except CheckpointError as exc:
            raise CheckpointError(
                f"checkpoint.load_iteration={load_iteration}: {exc} {_choose_another_hint(ckpt_dir)}"
            ) from None
        return directory
    latest = ckpt_dir / LATEST_FILE
    if not latest.is_file():
        return None
    name = latest.read_text().strip()
    directory = ckpt_dir / name
    try:
        if not name or not directory.is_dir():
            raise CheckpointError(f"{directory} does not exist")
        verify_checkpoint(directory)
    except CheckpointError as exc:
        raise CheckpointError(
            f"the latest checkpoint cannot be loaded: {latest} names {name!r}, and {exc} "
            f"{_choose_another_hint(ckpt_dir)}"
        ) from None
    return directory


def plan_resume(ckpt_cfg, ckpt_dir: str | Path, config: dict, tokenizer: TokenizerRef) -> ResumePlan | None:
    """Decide, before anything is built, what this start resumes from; None for a fresh start. No process group
    needed; every rank reaches the same answer from the same files.

    `ckpt_cfg` is the checkpoint section, `config` the whole resolved config (`TrainConfig.to_dict()`). Raises
    CheckpointError (one line, what to do) when the checkpoint to resume is damaged (listing the complete ones and
    `checkpoint.load_iteration`), was trained with another tokenizer, already reached `optim.train_steps` (a
    finished run is never resumed, nor its config rewritten), or when the config differs from the checkpoint's in a
    key the checkpoint fixes and `checkpoint.override` does not list it."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_cfg.resume:
        if (ckpt_dir / LATEST_FILE).is_file() or any(ckpt_dir.glob("iter_*")):
            raise CheckpointError(
                f"checkpoint.resume=false, but {ckpt_dir} holds checkpoints of an earlier run, "
                f"which this start would overwrite; choose another logging.run_dir (or "
                f"checkpoint.dir) for a new run, or resume it (checkpoint.resume=true)."
            )
        return None
    directory = _resume_directory(ckpt_dir, ckpt_cfg.load_iteration)
    if directory is None:
        return None
    meta = read_meta(directory)
    if not (meta.has_optimizer and meta.trainer is not None):
        raise CheckpointError(
            f"{directory} holds no optimizer or trainer state ({meta.source.description}), so a "
            f"run cannot resume from it; use it as student.init in a new run directory."
        )
    check_tokenizer(meta, f"the checkpoint {directory}", tokenizer)
    from taidtron.config import flatten_config

    train_steps = flatten_config(config)["optim.train_steps"]
    saved_steps = flatten_config(meta.config or {}).get("optim.train_steps", train_steps)
    if meta.step >= train_steps:
        if train_steps == saved_steps:
            raise CheckpointError(
                f"the run in {ckpt_dir} is complete: {directory.name} is at step {meta.step} = "
                f"optim.train_steps, so there is nothing to resume (nothing was changed). To train "
                f"further raise optim.train_steps (the run continues from step {meta.step}); for a "
                f"new run choose another logging.run_dir (or checkpoint.dir)."
            )
        raise CheckpointError(
            f"optim.train_steps={train_steps}, but {directory} is already at step {meta.step}; "
            f"raise optim.train_steps above {meta.step}, or choose another logging.run_dir (or "
            f"checkpoint.dir) for a new run."
        )
    changes = compare_configs(meta.config, config, ckpt_cfg.override) if meta.config else []
    frozen = [c for c in changes if c.kind == "frozen"]
    refused = [c for c in changes if c.kind == "refused"]
    if frozen or refused:
        problems = []
        if refused:
            keys = ",".join(c.key for c in refused)
            problems.append(
                f"in keys the checkpoint fixes: {', '.join(map(str, refused))}; to apply "
                f"{'this change' if len(refused) == 1 else 'these changes'} on purpose, resume with "
                f"checkpoint.override=[{keys}]"
            )
        for change in frozen:
            reason = RESUME_FROZEN_KEYS[_matches(change.key, RESUME_FROZEN_KEYS)]
            problems.append(f"in {change}, which no resume can change: {reason}")
        raise CheckpointError(
            f"the config differs from the checkpoint {directory} (step {meta.step}) "
            + "; and ".join(problems)
            + ". For a new run choose another logging.run_dir (or "
            "checkpoint.dir)."
        )
    newer = sorted(p.name for p in ckpt_dir.glob("iter_*") if p.is_dir() and p.name > directory.name)
    return ResumePlan(
        directory=directory,
        meta=meta,
        changes=changes,
        stretch_schedule="optim.train_steps" in ckpt_cfg.override and saved_steps != train_steps,
        newer=newer,
    )


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


def _any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over every rank of the default group (one all-reduce); the flags themselves without one."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return tuple(bool(f) for f in flags)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    values = torch.tensor([float(f) for f in flags], device=device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in values.tolist())


def _is_main() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def _layout() -> dict:
    """This run's parallel layout and this rank's coordinates in it (pp, tp, dp)."""
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return {"tp": 1, "pp": 1, "dp": 1, "tp_rank": 0, "pp_rank": 0, "dp_rank": 0}
    return {
        "tp": ps.get_tensor_model_parallel_world_size(),
        "pp": ps.get_pipeline_model_parallel_world_size(),
        "dp": ps.get_data_parallel_world_size(),
        "tp_rank": ps.get_tensor_model_parallel_rank(),
        "pp_rank": ps.get_pipeline_model_parallel_rank(),
        "dp_rank": ps.get_data_parallel_rank(),
    }


def _same_layout(saved: Layout, current: dict) -> bool:
    return (saved.tp, saved.pp, saved.dp) == (current["tp"], current["pp"], current["dp"])


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

    return ShardedObject(
        RNG_KEY,
        data,
        (layout["pp"], layout["tp"], layout["dp"]),
        (layout["pp_rank"], layout["tp_rank"], layout["dp_rank"]),
        replica_id=0,
    )


# ----------------------------------------------------------------------------------------------------------
# architecture check


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


# ----------------------------------------------------------------------------------------------------------
# save


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


def _write_text(path: Path, text: str) -> None:
    """Write then fsync then rename: the file is either the old one or the complete new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _write_iteration(tmp: Path, *, model, optimizer, meta: CheckpointMeta, step: int, save_rng: bool) -> None:
    """All ranks: write model (+ optimizer, + RNG) into `tmp`, then rank 0 adds taidtron.json with the manifest."""
    from megatron.core import dist_checkpointing

    if not isinstance(meta, CheckpointMeta):
        raise TypeError(f"meta must be a CheckpointMeta, got {type(meta).__name__}")
    layout = _layout()
    if optimizer is not None and any(
        len(getattr(getattr(sub, "optimizer", None), "state", {"": 0})) == 0
        for sub in getattr(optimizer, "chained_optimizers", [optimizer])
    ):
        # megatron's DistributedOptimizer.state_dict() asserts on Adam state that only exists after a step.
        raise CheckpointError(
            "the optimizer has taken no step yet, so it has no state to save; save after the "
            "first optimizer step (or save the model alone)."
        )
    state = _sharded_state(model, optimizer, is_loading=False)
    if save_rng:
        state[RNG_KEY] = _rng_sharded_object(layout, _rng_state())
    dist_checkpointing.save(state, str(tmp))
    _barrier()  # every rank's files are closed before rank 0 lists them
    if _is_main():
        params_dtype = next(iter(model.parameters())).dtype
        meta = dataclasses.replace(
            meta,
            format_version=FORMAT_VERSION,
            step=step,
            content_id=meta.content_id or uuid.uuid4().hex,
            saved_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            params_dtype=str(params_dtype).removeprefix("torch."),
            layout=Layout(tp=layout["tp"], pp=layout["pp"], dp=layout["dp"]),
            has_optimizer=optimizer is not None,
            has_rng=save_rng,
            files=_scan_files(tmp),
        )
        _write_text(tmp / META_FILE, meta.to_json())


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


def save_checkpoint(
    ckpt_dir: str | Path, step: int, *, model: torch.nn.Module, optimizer=None, meta: CheckpointMeta, keep_last: int = 0
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
    _refuse_non_finite(model, optimizer, ckpt_dir, step)
    if _is_main():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    error: BaseException | None = None
    try:
        _write_iteration(tmp, model=model, optimizer=optimizer, meta=meta, step=step, save_rng=optimizer is not None)
    except (Exception, _checkpoint_exception()) as exc:  # torch's CheckpointException is a BaseException
        error = exc
    failed, out_of_space = _any_rank(error is not None, error is not None and _is_out_of_space(error))
    if failed:
        if _is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        _barrier()
        if error is not None and not out_of_space and not _is_os_error(error):
            raise error  # not the file system: a bug, keep its traceback
        raise SaveError(_save_failure_message(error, out_of_space, ckpt_dir, step)) from error
    if _is_main():
        replace_dir(tmp, final)  # a re-save of the same step (e.g. a signal right after a periodic save)
        _write_text(ckpt_dir / LATEST_FILE, final.name)
        remove_leftovers(ckpt_dir)
        if keep_last > 0:
            older = sorted(p for p in ckpt_dir.glob("iter_*") if p.is_dir() and p.name < final.name)
            for old in older[: max(0, len(older) - (keep_last - 1))]:
                _discard(old)
    _barrier()
    return final


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
            _remove(old)
        else:
            old.rename(target)
    for stale in [*ckpt_dir.glob(".tmp_iter_*"), *ckpt_dir.glob(".trash_*")]:
        shutil.rmtree(stale, ignore_errors=True)


def _discard(path: Path) -> None:
    """Remove an iteration directory so that no partial copy keeps its name: rename to a hidden name, then delete."""
    trash = path.with_name(f".trash_{path.name}")
    _remove(trash)
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _non_finite_tensors(model: torch.nn.Module, optimizer) -> list[str]:
    """What of this rank's shards holds a NaN or an infinity: model parameters by name, optimizer state (fp32 main
    parameters, Adam moments) by kind."""
    found = [
        f"student {name}"
        for name, param in model.named_parameters()
        if param.is_floating_point() and not bool(torch.isfinite(param).all())
    ]
    kinds: dict[str, int] = {}
    for sub in getattr(optimizer, "chained_optimizers", [optimizer]) if optimizer is not None else []:
        inner = getattr(sub, "optimizer", None)
        for group in getattr(inner, "param_groups", []):
            for param in group["params"]:
                tensors = {"main parameters": param, **inner.state.get(param, {})}
                for kind, tensor in tensors.items():
                    if (
                        isinstance(tensor, torch.Tensor)
                        and tensor.is_floating_point()
                        and not bool(torch.isfinite(tensor).all())
                    ):
                        kinds[kind] = kinds.get(kind, 0) + 1
    found += [f"optimizer {kind} ({count} tensor{'s' if count > 1 else ''})" for kind, count in kinds.items()]
    return found


def _refuse_non_finite(model: torch.nn.Module, optimizer, ckpt_dir: Path, step: int) -> None:
    """Every rank checks its own shards; if any holds a non-finite value, every rank raises SaveError before a
    byte is written."""
    with torch.no_grad():
        local = _non_finite_tensors(model, optimizer)
    (bad,) = _any_rank(bool(local))
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


def describe_latest(ckpt_dir: Path) -> str:
    """For messages: which checkpoint `latest` names, or that there is none."""
    latest = ckpt_dir / LATEST_FILE
    name = latest.read_text().strip() if latest.is_file() else ""
    return f"{ckpt_dir / name} is still the latest checkpoint" if name else f"{ckpt_dir} holds no checkpoint yet"


def _checkpoint_exception() -> type:
    from torch.distributed.checkpoint.api import CheckpointException

    return CheckpointException


def _exception_chain(error: BaseException) -> list[BaseException]:
    """`error`, its causes and contexts, and the per-rank exceptions a torch CheckpointException carries."""
    seen: list[BaseException] = []
    todo = [error]
    while todo:
        exc = todo.pop()
        if exc is None or any(exc is s for s in seen):
            continue
        seen.append(exc)
        todo += [exc.__cause__, exc.__context__]
        for wrapped in getattr(exc, "failures", {}).values():  # {rank: (exception, traceback)}
            todo.append(wrapped[0] if isinstance(wrapped, tuple) else wrapped)
    return seen


def _is_os_error(error: BaseException) -> bool:
    return any(isinstance(exc, OSError) for exc in _exception_chain(error))


def _is_out_of_space(error: BaseException) -> bool:
    """ENOSPC or EDQUOT anywhere in the chain. megatron's writer processes report their OSError as the text of a
    RuntimeError gathered from every rank (the OSError itself does not survive), so the text counts too."""
    codes = (errno.ENOSPC, errno.EDQUOT)
    texts = [os.strerror(code) for code in codes]
    return any(
        getattr(exc, "errno", None) in codes or any(t in str(exc) for t in texts) for exc in _exception_chain(error)
    )


def _save_failure_message(error: BaseException | None, out_of_space: bool, ckpt_dir: Path, step: int) -> str:
    free = shutil.disk_usage(ckpt_dir).free if ckpt_dir.exists() else 0
    previous = describe_latest(ckpt_dir)
    if out_of_space:
        need = ""
        latest = ckpt_dir / LATEST_FILE
        if latest.is_file() and (ckpt_dir / latest.read_text().strip()).is_dir():
            size = sum(f.stat().st_size for f in (ckpt_dir / latest.read_text().strip()).rglob("*") if f.is_file())
            need = f"; one checkpoint takes {_mib(size)}"
        return (
            f"no space left on the file system of {ckpt_dir} while saving step {step}: {_mib(free)} free after "
            f"removing the partial save{need}. The partial save was removed and {previous}. Free space there, "
            f"lower checkpoint.keep_last, or set checkpoint.dir to a larger file system, then resume."
        )
    reason = (
        "it failed on another rank"
        if error is None
        else f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
    )
    return (
        f"saving step {step} to {ckpt_dir} failed ({reason}). The partial save was removed and {previous}; "
        f"check that the directory is writable, then resume."
    )


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def save_model(directory: str | Path, *, model: torch.nn.Module, meta: CheckpointMeta, overwrite: bool = False) -> Path:
    """Write a single iteration directory holding only model weights (what `tools/convert.py import` makes), with
    the same atomicity as `save_checkpoint`: a hidden sibling is written and renamed to `directory` at the end, and
    removed if the save fails."""
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
    try:
        _write_iteration(tmp, model=model, optimizer=None, meta=meta, step=meta.step, save_rng=False)
        if _is_main():
            replace_dir(tmp, directory)
    finally:
        if _is_main() and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _barrier()
    return directory


# ----------------------------------------------------------------------------------------------------------
# load


def _match_checkpoint_keys(state: dict, directory: Path) -> set[str]:
    """Check that the checkpoint has every model tensor `state` asks for, before anything is read; drop from `state`
    the Transformer Engine `_extra_state` entries it lacks and return their state dict names (what the model's
    load_state_dict will find missing).

    A checkpoint written with the local layer spec (conversion, CPU runs) has no `_extra_state` for the modules only
    TE gives one (its fused attention and norms; FP8 bookkeeping that starts empty): those are tolerated. Any other
    key it lacks means another architecture, and the load is refused with the keys named."""
    from megatron.core.dist_checkpointing.dict_utils import extract_matching_values
    from megatron.core.dist_checkpointing.mapping import ShardedBase
    from megatron.core.dist_checkpointing.serialization import load_sharded_metadata

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
    if _is_main():
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
    import torch.distributed as dist
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.serialization import get_default_load_sharded_strategy
    from megatron.core.dist_checkpointing.strategies.fully_parallel import FullyParallelLoadStrategyWrapper
    from torch.distributed.checkpoint.api import CheckpointException

    strategy = None
    if group is not None and dist.get_world_size(group) > 1:
        strategy = FullyParallelLoadStrategyWrapper(get_default_load_sharded_strategy(str(directory)), group)
    try:
        with overrides.collective_timeout([group, None], LOAD_TIMEOUT):
            return dist_checkpointing.load(state, str(directory), sharded_strategy=strategy)
    except (Exception, CheckpointException) as exc:  # many types (torch's is a BaseException): name the checkpoint
        hint = (
            _choose_another_hint(directory.parent, exclude=directory)
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


def load_model_weights(model: torch.nn.Module, path: str | Path, *, group) -> CheckpointMeta:
    """Load a GPTModel stage's weights from a taidtron checkpoint, whatever tp/pp it was saved with. Embedding and
    output rows beyond the saved padded vocabulary are zero; rows beyond the model's are dropped.

    `group`: the ranks that load the same shards (the data-parallel group) split the reading; None: each rank
    reads all it needs. Every rank of the default group calls this."""
    directory = resolve_iteration_dir(path)
    meta = verify_checkpoint(directory)
    check_architecture(model, meta, directory)
    # Nested as saved: dist_checkpointing merges the checkpoint's common (non-tensor) state, e.g. the optimizer's
    # param groups of a training checkpoint, into the top level of what it returns.
    state = _sharded_state(model, None, is_loading=True)
    absent = _match_checkpoint_keys(state, directory)
    loaded = _dist_load(state, directory, group)
    _load_model_state(model, loaded["model"], absent, directory)
    return meta


def load_checkpoint(path: str | Path, *, model: torch.nn.Module, optimizer=None, group) -> CheckpointMeta:
    """Load model (+ optimizer) from a checkpoint saved at any tp/pp; returns its metadata. RNG states are restored
    when the checkpoint was saved with this run's tp/pp/dp layout, else skipped with a logged note.

    `group`: the ranks that load the same shards (the data-parallel group) split the reading; None: each rank
    reads all it needs. Every rank of the default group calls this."""
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
    if optimizer is not None:
        overrides.materialize_optimizer_state(optimizer)
    state = _sharded_state(model, optimizer, is_loading=True)
    absent = _match_checkpoint_keys(state, directory)
    layout = _layout()
    restore_rng = meta.has_rng and _same_layout(meta.layout, layout)
    if restore_rng:
        state[RNG_KEY] = _rng_sharded_object(layout, None)
    elif meta.has_rng and _is_main():
        log.warning(
            "RNG states not restored: %s was saved at tp=%s pp=%s dp=%s and this run is tp=%s pp=%s dp=%s "
            "(per-rank random streams do not reshard; weights, optimizer and schedules are restored)",
            directory,
            meta.layout.tp,
            meta.layout.pp,
            meta.layout.dp,
            layout["tp"],
            layout["pp"],
            layout["dp"],
        )
    loaded = _dist_load(state, directory, group)
    _load_model_state(model, loaded["model"], absent, directory)
    if optimizer is not None:
        # DistributedOptimizer.load_state_dict copies into fp32 parameters in place: autograd must be off.
        with torch.no_grad():
            overrides.load_optimizer_state(optimizer, loaded["optimizer"])
    if restore_rng:
        _set_rng_state(loaded[RNG_KEY])
    return meta
