"""Resuming a run: which checkpoint a start continues from, and what of the config may differ from the one it was
written with. Decided before anything is built, from the files alone (every rank reaches the same answer)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taidtron.checkpoint.integrity import choose_another_hint, verify_checkpoint
from taidtron.checkpoint.meta import CheckpointError, CheckpointMeta, TeacherSource, TokenizerRef
from taidtron.checkpoint.store import LATEST_FILE, iteration_name, read_meta
from taidtron.config import flatten_config
from taidtron.losses.objective import objective_needs_teacher


def check_teacher_unchanged(saved: TeacherSource | None, current: TeacherSource | None) -> str | None:
    """A run resumes only with the teacher it started with (same content hash). Returns a note for the log when the
    same teacher was moved (a copy elsewhere is fine), else None."""
    if saved is None and current is None:
        return None

    def describe(source: TeacherSource | None) -> str:
        return "a randomly initialised teacher" if source is None else f"{source.path} (hash {source.hash[:12]})"

    if saved is None or current is None or saved.hash != current.hash:
        raise CheckpointError(
            f"the teacher changed since the checkpoint was written: checkpoint used "
            f"{describe(saved)}, this run has {describe(current)}. Resume with the original "
            f"teacher.init (or teacher.cache), or start a new run directory (checkpoint.dir) for a new teacher."
        )
    if saved.path != current.path:
        return f"teacher checkpoint moved from {saved.path} to {current.path} (same content); continuing"
    return None


def check_tokenizer(meta: CheckpointMeta, what: str, tokenizer: TokenizerRef) -> None:
    """The checkpoint's weights were trained with the run's tokenizer (equal fingerprints), when it records one
    (`unchecked_tokenizer` says why one that does not cannot be checked)."""
    if meta.tokenizer is None or not meta.tokenizer.known or meta.tokenizer.fingerprint == tokenizer.fingerprint:
        return
    raise CheckpointError(
        f"{what} was trained with the tokenizer {meta.tokenizer.path} (fingerprint "
        f"{meta.tokenizer.fingerprint[:12]}), but data.tokenizer is {tokenizer.path} (fingerprint "
        f"{tokenizer.fingerprint[:12]}): the same ids would name other tokens. Set data.tokenizer "
        f"to the tokenizer the checkpoint was trained with, or use a checkpoint trained with this "
        f"one."
    )


def unchecked_tokenizer(meta: CheckpointMeta) -> str:
    """Why a checkpoint's tokenizer is not known, for a note: an import from a folder without one, or a checkpoint
    written before imports recorded it."""
    if meta.tokenizer is not None:
        return f"imported from {meta.tokenizer.path}, which holds no tokenizer.json or tokenizer.model"
    if meta.source.kind == "hf_import":
        return "imported before taidtron recorded the tokenizer of imports"
    return f"{meta.source.kind} checkpoint written without one"


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
    "teacher.cache",
    "optim.max_skipped_steps",
)
"""Config keys (a trailing dot: a whole section) a resumed run may change freely: they change how the run is
logged, saved, laid out or computed, not what it trains. The layout reshards on load; the tokenizer is compared by
its fingerprint and the teacher (checkpoint or cache) by its content instead of by path."""
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
                f"checkpoint.load_iteration={load_iteration}: {exc} {choose_another_hint(ckpt_dir)}"
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
            f"{choose_another_hint(ckpt_dir)}"
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
