"""Runs derived from an experiment config, shared by the tools that chain runs (`tools/smoke_test.py`, the
paper-mini experiment): the pretraining run of one of a config's models, with the same trainer."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from taidtron.config import ROLES, ModelConfig, load_config


def pretraining_overrides(
    config: Path, overrides: list[str], checkpoint_dir: Path, run_dir: Path, steps: int, lr: float, *, role: str
) -> list[str]:
    """Overrides that turn the distillation config into the next-token pretraining run of its `role` model (the
    student section takes that model's architecture and starts from random weights), one micro-batch per step,
    warm-up a tenth of the steps, cosine to lr / 10, saving only at the end into `checkpoint_dir`."""
    if role not in ROLES:
        raise ValueError(f"role={role!r} must be one of {', '.join(ROLES)}.")
    # The model is trained from random weights: the section's own init (e.g. the checkpoint this run will write, from
    # an earlier run) must not resolve its architecture.
    cfg = load_config(config, [*overrides, f"{role}.init=null"])
    model = getattr(cfg, role)
    architecture = [
        f"student.{f.name}={json.dumps(getattr(model, f.name))}" for f in fields(ModelConfig) if f.name != "init"
    ]
    return [
        *overrides,
        *architecture,
        "student.init=null",
        "taid.loss=lm",
        f"parallel.micro_batch_size={cfg.parallel.global_batch_size}",
        f"optim.train_steps={steps}",
        f"optim.lr={lr}",
        f"optim.min_lr={lr / 10}",
        f"optim.warmup_steps={max(1, steps // 10)}",
        "logging.eval_interval=0",
        "logging.eval_iters=0",
        "checkpoint.save_interval=0",
        "checkpoint.keep_last=1",
        f"checkpoint.dir={checkpoint_dir}",
        f"logging.run_dir={run_dir}",
    ]


def teacher_pretraining_overrides(
    config: Path, overrides: list[str], teacher_dir: Path, run_dir: Path, steps: int, lr: float
) -> list[str]:
    """Overrides that turn the distillation config into the teacher's pretraining run: the student section takes
    the teacher's architecture, the objective is next-token loss, one micro-batch per step."""
    return pretraining_overrides(config, overrides, teacher_dir, run_dir, steps, lr, role="teacher")
