"""taidtron.json, the record of everything about a checkpoint that is not a tensor: its schema (`CheckpointMeta`),
reading it (format 2, and format 1 migrated on read) and the checkpoint errors. No torch here."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from taidtron.config import ModelConfig
from taidtron.schema import Reader


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete, malformed or does not fit the model."""


class SaveError(CheckpointError):
    """A save that was refused (non-finite state) or failed (e.g. no space left); the previous checkpoint is
    intact and still `latest`."""


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


UNKNOWN_TOKENIZER = "unknown"
"""`TokenizerRef.fingerprint` of an import whose Hugging Face folder held no tokenizer: recorded as unknown, so that
a run using it says it cannot check the tokenizer instead of staying silent."""


@dataclass(frozen=True)
class TokenizerRef:
    """The tokenizer the weights were trained with."""

    path: str
    """The tokenizer file or folder as the run configured it, or the Hugging Face folder an import read it from
    (absolute when written by this version)."""
    fingerprint: str
    """`Tokenizer.fingerprint()`: equal fingerprints index the same vocabulary. `unknown` (UNKNOWN_TOKENIZER) for an
    import whose folder held no tokenizer."""

    @classmethod
    def of(cls, path: str | Path, fingerprint: str) -> TokenizerRef:
        return cls(path=str(Path(path).resolve()), fingerprint=fingerprint)

    @classmethod
    def unknown(cls, searched: str | Path) -> TokenizerRef:
        """An import from `searched`, a folder without tokenizer.json or tokenizer.model."""
        return cls.of(searched, UNKNOWN_TOKENIZER)

    @property
    def known(self) -> bool:
        return self.fingerprint != UNKNOWN_TOKENIZER


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
    """The tokenizer the weights were trained with: for imports the Hugging Face folder's (its fingerprint
    `unknown` when the folder had none); None in checkpoints that record none (imports written before they did,
    tests)."""
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
    digests: dict[str, str] = field(default_factory=dict)
    """The content digest of every file of the manifest, `<algorithm>:<hex>` (`taidtron.checkpoint.integrity`);
    empty in checkpoints written before digests were recorded, whose bytes a load cannot verify."""

    RECORDED_FIELDS: ClassVar[tuple[str, ...]] = (
        "model",
        "padded_vocab_size",
        "source",
        "tokenizer",
        "seq_length",
        "teacher",
        "trainer",
        "config",
        "format_version",
        "step",
        "content_id",
        "saved_at",
        "params_dtype",
        "layout",
        "has_optimizer",
        "has_rng",
        "files",
    )
    """The fields every format 2 file holds; `digests`, added later, takes its default when absent."""

    def __post_init__(self):
        # The architecture only: a config section that extends ModelConfig (the teacher's, with its `cache`) records
        # the ModelConfig fields, which is all a reader of the file accepts.
        if type(self.model) is not ModelConfig and isinstance(self.model, ModelConfig):
            model = ModelConfig(**{f.name: getattr(self.model, f.name) for f in dataclasses.fields(ModelConfig)})
            object.__setattr__(self, "model", model)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)


MODEL_FIELDS_REQUIRED = ModelConfig.RECORDED_FIELDS
"""ModelConfig fields a checkpoint must record (the rest take their defaults when an older checkpoint lacks them)."""


def _invalid(file: Path, where: str, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{file}: `{where}` {problem}. The file is damaged or was not written by taidtron; "
        f"re-create the checkpoint (or resume from an earlier iteration)."
    )


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
    reader = Reader(error=lambda where, problem: _invalid(file, where, problem), strict=True)
    return reader.build(CheckpointMeta, raw)
