"""`Checkpointer`: what a training run does with checkpoints, in the order `taidtron.loop.fit` calls it.

checkpointer = Checkpointer(cfg, ctx)
plan = checkpointer.plan(tokenizer)      # before building: leftovers cleared, init checkpoints' tokenizers and
                                         # vocabularies checked, the resume decided (None: a fresh start);
                                         # checkpointer.notes: what could not be checked, for the banner
trainer = build_trainer(...)
checkpointer.restore(trainer, plan)      # weights, optimizer, RNG, trainer state; the writer made ready
...
if checkpointer.due(step, skipped=..., now=preempted or last):
    checkpointer.save(trainer)
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch.distributed as dist

from taidtron import overrides
from taidtron.checkpoint.dcp import load_checkpoint, save_checkpoint
from taidtron.checkpoint.meta import CheckpointMeta, TokenizerRef, WeightsSource
from taidtron.checkpoint.model_check import check_vocabulary
from taidtron.checkpoint.resume import (
    ResumePlan,
    check_teacher_unchanged,
    check_tokenizer,
    plan_resume,
    unchecked_tokenizer,
)
from taidtron.checkpoint.store import read_meta, remove_leftovers
from taidtron.config import TrainConfig
from taidtron.distributed import ParallelContext
from taidtron.losses.objective import run_models

log = logging.getLogger(__name__)


class Checkpointer:
    """The checkpoints of one run: `checkpoint.dir` (default `<logging.run_dir>/checkpoints`), saved every
    `checkpoint.save_interval` applied steps, on a stop signal and at the end; resumed from `latest` (or
    `checkpoint.load_iteration`) under the resume rules of `taidtron.checkpoint.resume`."""

    def __init__(self, cfg: TrainConfig, ctx: ParallelContext):
        self.cfg, self.ctx = cfg, ctx
        self.run_dir = Path(cfg.logging.run_dir)
        self.dir = Path(cfg.checkpoint.dir or self.run_dir / "checkpoints")
        self.config = cfg.to_dict()
        self.tokenizer: TokenizerRef | None = None
        self.notes: list[str] = []
        """What `plan` could not check (an init checkpoint that records no tokenizer), for the start-up banner."""
        self._periodic_pending = False  # a periodic save that fell on a skipped step waits for the next applied one

    def plan(self, tokenizer: TokenizerRef) -> ResumePlan | None:
        """Before anything is built: refuse init checkpoints trained with another tokenizer or holding another
        vocabulary, finish what an interrupted save left, and decide what this start resumes from (None: a fresh
        start)."""
        self.tokenizer = tokenizer
        for role, model_cfg in run_models(self.cfg).items():
            if model_cfg.init:
                what = f"{role}.init {model_cfg.init}"
                meta = read_meta(model_cfg.init)
                check_tokenizer(meta, what, tokenizer)
                check_vocabulary(meta, model_cfg.vocab_size, what, f"{role}.vocab_size")
                if meta.tokenizer is None or not meta.tokenizer.known:
                    self.notes.append(
                        f"{what} records no tokenizer ({unchecked_tokenizer(meta)}), so it cannot be checked "
                        f"against data.tokenizer; make sure they are the same (re-import with --tokenizer to record it)"
                    )
        if self.ctx.is_main:
            remove_leftovers(self.dir)
        if self.ctx.world_size > 1:
            dist.barrier()  # nobody reads the directory while rank 0 tidies it
        plan = plan_resume(self.cfg.checkpoint, self.dir, self.config, tokenizer)
        if plan is not None:
            what = f"the checkpoint {plan.directory}"
            check_vocabulary(plan.meta, self.cfg.student.vocab_size, what, "student.vocab_size")
        return plan

    def restore(self, trainer, plan: ResumePlan | None) -> None:
        """Load what `plan` resumes (weights, optimizer, RNG states, the trainer's step, data position and
        schedules) into a built trainer, and make the checkpoint writer ready for the first save."""
        if plan is not None:
            meta = load_checkpoint(plan.directory, model=trainer.student, optimizer=trainer.optimizer, ctx=self.ctx)
            note = check_teacher_unchanged(meta.teacher, trainer.teacher_source)
            if note and self.ctx.is_main:
                log.warning(note)
            trainer.load_state_dict(meta.trainer, stretch_schedule=plan.stretch_schedule)
        overrides.prepare_writer()  # its helper process ignores the stop signals, whatever handlers are installed

    def due(self, step: int, *, skipped: bool, now: bool = False) -> bool:
        """Whether to save after `step`: `now` (a stop signal, the last step), or a periodic save on an applied
        step (one that falls on a skipped step moves to the next applied one)."""
        interval = self.cfg.checkpoint.save_interval
        self._periodic_pending = self._periodic_pending or bool(interval and step % interval == 0)
        return now or (self._periodic_pending and not skipped)

    def save(self, trainer) -> Path:
        """Save the trainer's student, optimizer and state as `iter_<step>`; `latest` moves when it is complete."""
        trainer.sync_weights()
        meta = CheckpointMeta(
            model=self.cfg.student,
            padded_vocab_size=trainer.padded_vocab_size,
            source=WeightsSource(kind="training", description=f"taidtron training run {self.run_dir.resolve()}"),
            tokenizer=self.tokenizer,
            seq_length=self.cfg.data.seq_length,
            teacher=trainer.teacher_source,
            trainer=trainer.state_dict(),
            config=self.config,
        )
        path = save_checkpoint(
            self.dir,
            trainer.step,
            model=trainer.student,
            optimizer=trainer.optimizer,
            meta=meta,
            ctx=self.ctx,
            keep_last=self.cfg.checkpoint.keep_last,
        )
        self._periodic_pending = False
        return path
