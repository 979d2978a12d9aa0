"""Every run of the experiment as a `Job`: its config overrides, what it depends on, where it writes, and its spec
(a hash of everything that determines its result, so a finished run is reused only while that holds).

Per replicate k (design.py): each teacher's pretraining on the general domain, the student's pretraining, the
distillation of that student by every arm from every teacher, and the transfer variant's fine-tuned teacher and
runs; then a test measurement of every student against each teacher it is compared with.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from taidtron.experiments.paper_mini.dataset import prefix, tokenizer_path
from taidtron.experiments.paper_mini.design import (
    ARMS,
    DISTILL_DATA_SEED_OFFSET,
    EVAL_DATA_SEED,
    START,
    Design,
    Teacher,
)
from taidtron.experiments.paper_mini.paths import CONFIG, read_json

GENERAL, TARGET = "general", "target"
"""The two variants: distillation on the general domain, and the transfer to the target domain."""
FINETUNING_COST = "fine-tuning on the target"
"""End of the cost-table line of the transfer teacher's fine-tuning; the variant's runs' lines begin `target:`."""


def is_transfer_cost(cost_group: str) -> bool:
    """Whether a line of the page's cost table belongs to the domain-transfer variant."""
    return cost_group.startswith(f"{TARGET}:") or cost_group.endswith(FINETUNING_COST)


@dataclass
class Job:
    name: str
    kind: str
    """`train` (taidtron.train.run) or `eval` (taidtron.evaluate.evaluate on the test split)."""
    overrides: list[str]
    marker: Path
    """Written when the job succeeded: its spec, time and (eval) metrics. Train: <run dir>/job.json."""
    cost_group: str
    """The line of the page's cost table it counts in."""
    steps: int = 0
    """Optimizer steps (train jobs)."""
    deps: list[str] = field(default_factory=list)
    cost: float = 0.0
    """Estimated matmul FLOPs, to start the longest jobs first."""
    run_dir: Path | None = None
    max_batches: int | None = None
    run: dict | None = None
    """For a distillation (or continued-training) run: its variant, arm, teacher and seed."""
    spec: str = ""


@dataclass(frozen=True)
class Cell:
    """What a test measurement is of: a student (an arm's run, or the pretrained start) against one teacher."""

    variant: str
    arm: str
    """A key of ARMS, or START."""
    teacher: str
    """The teacher it is measured against (for the transfer variant: the fine-tuned one)."""
    seed: int
    run_dir: Path
    """The student's run directory (its checkpoints/ are measured)."""
    trained_with: str | None
    """The teacher the student was distilled from (None: no teacher)."""


def _common(work: Path, design: Design, domain: str, split: str | None) -> list[str]:
    return [
        f"data.blend=[{prefix(work, domain)}]",
        f"data.tokenizer={tokenizer_path(work)}",
        f"student.vocab_size={design.vocab_size}",
        f"teacher.vocab_size={design.vocab_size}",
        "logging.wandb_mode=disabled",
        *([f"data.split={split}"] if split else []),
    ]


def _matmul_params(overrides: list[str], role: str) -> int:
    from taidtron.config import load_config
    from taidtron.flops import matmul_params_per_token

    model = getattr(load_config(CONFIG, overrides), role)
    return matmul_params_per_token(model, model.vocab_size)


def plan_jobs(work: Path, design: Design, data_fingerprint: dict) -> tuple[list[Job], list[Cell]]:
    """Every job (dependencies before dependents) and every test cell of the experiment."""
    from taidtron.config import load_config
    from taidtron.recipes import pretraining_overrides, teacher_pretraining_overrides

    base = load_config(CONFIG, list(design.run_overrides))
    tokens_per_step = base.parallel.global_batch_size * base.data.seq_length
    target_split = design.transfer.split if design.transfer else None
    common = {GENERAL: _common(work, design, "general", None), TARGET: _common(work, design, "target", target_split)}
    jobs: list[Job] = []
    cells: list[Cell] = []

    def pretraining_eval(steps: int) -> list[str]:
        return [f"logging.eval_interval={max(1, steps // 10)}", f"logging.eval_iters={design.pretraining_eval_iters}"]

    def add_train(
        name, overrides, run_dir, steps, group, deps=(), teacher: Teacher | None = None, run: dict | None = None
    ) -> Job:
        flops = 6 * _matmul_params(overrides, "student") + (2 * _matmul_params(overrides, "teacher") if teacher else 0)
        cost = flops * tokens_per_step * steps
        job = Job(name, "train", overrides, run_dir / "job.json", group, steps, list(deps), cost, run_dir, run=run)
        jobs.append(job)
        return job

    for seed in design.seeds:
        seeded = [f"seed={seed}", f"data.seed={seed}"]
        teacher_ckpt: dict[tuple[str, str], Path] = {}
        for teacher in design.teachers:
            run_dir = work / "teachers" / f"{teacher.name}-s{seed}"
            teacher_ckpt[GENERAL, teacher.name] = run_dir / "checkpoints"
            overrides = teacher_pretraining_overrides(
                CONFIG,
                [*common[GENERAL], *teacher.overrides(), *seeded],
                run_dir / "checkpoints",
                run_dir,
                teacher.steps,
                teacher.lr,
            )
            add_train(
                f"teacher-{teacher.name}-s{seed}",
                [*overrides, *pretraining_eval(teacher.steps)],
                run_dir,
                teacher.steps,
                f"teacher {teacher.name}: pretraining",
            )
        student_dir = work / "students" / f"s{seed}"
        student = add_train(
            f"student-s{seed}",
            [
                *pretraining_overrides(
                    CONFIG,
                    [*common[GENERAL], *seeded],
                    student_dir / "checkpoints",
                    student_dir,
                    design.student_steps,
                    design.student_lr,
                    role="student",
                ),
                *pretraining_eval(design.student_steps),
            ],
            student_dir,
            design.student_steps,
            "student: pretraining",
        )
        variants = [(GENERAL, design.teachers, design.arms)]
        if design.transfer:
            transfer = design.transfer
            teacher = design.teacher(transfer.teacher)
            run_dir = work / "teachers" / f"{teacher.name}-target-s{seed}"
            teacher_ckpt[TARGET, teacher.name] = run_dir / "checkpoints"
            overrides = teacher_pretraining_overrides(
                CONFIG,
                [*common[TARGET], *teacher.overrides(), *seeded],
                run_dir / "checkpoints",
                run_dir,
                transfer.finetune_steps,
                transfer.finetune_lr,
            )
            add_train(
                f"teacher-{teacher.name}-target-s{seed}",
                [
                    *overrides,
                    f"student.init={teacher_ckpt[GENERAL, teacher.name]}",
                    *pretraining_eval(transfer.finetune_steps),
                ],
                run_dir,
                transfer.finetune_steps,
                f"teacher {teacher.name}: {FINETUNING_COST}",
                deps=[f"teacher-{teacher.name}-s{seed}"],
            )
            variants.append((TARGET, (teacher,), transfer.arms))
        for variant, teachers, arms in variants:
            suffix = "" if variant == GENERAL else "-target"
            student_run = [
                *common[variant],
                *design.run_overrides,
                f"seed={seed}",
                f"data.seed={DISTILL_DATA_SEED_OFFSET + seed}",
                f"student.init={student_dir / 'checkpoints'}",
                "checkpoint.save_interval=0",
                "checkpoint.keep_last=1",
            ]
            runs = [(arm, teacher) for arm in arms if ARMS[arm].needs_teacher for teacher in teachers]
            runs += [(arm, None) for arm in arms if not ARMS[arm].needs_teacher]
            measured = [(START, None, student_dir, student.name)]
            for arm, teacher in runs:
                tag = f"{teacher.name}-{arm}" if teacher else arm
                run_dir = work / "runs" / variant / tag / f"s{seed}"
                teacher_part = (
                    [*teacher.overrides(), f"teacher.init={teacher_ckpt[variant, teacher.name]}"] if teacher else []
                )
                deps = [student.name] + ([f"teacher-{teacher.name}{suffix}-s{seed}"] if teacher else [])
                group = (
                    f"{variant}: distillation from teacher {teacher.name}"
                    if teacher
                    else f"{variant}: {ARMS[arm].label}"
                )
                run = add_train(
                    f"{variant}-{tag}-s{seed}",
                    [*student_run, *ARMS[arm].overrides, *teacher_part, f"logging.run_dir={run_dir}"],
                    run_dir,
                    base.optim.train_steps,
                    group,
                    deps,
                    teacher,
                    run={"variant": variant, "arm": arm, "teacher": teacher.name if teacher else None, "seed": seed},
                )
                measured.append((arm, teacher, run_dir, run.name))
            for arm, trained_with, run_dir, train_name in measured:
                for teacher in teachers if trained_with is None else (trained_with,):
                    name = f"{arm}-{variant}-{teacher.name}-s{seed}"
                    cells.append(
                        Cell(variant, arm, teacher.name, seed, run_dir, trained_with.name if trained_with else None)
                    )
                    jobs.append(
                        Job(
                            f"eval-{name}",
                            "eval",
                            [
                                *common[variant],
                                *design.run_overrides,
                                f"seed={seed}",
                                f"data.seed={EVAL_DATA_SEED}",
                                "taid.loss=fkl",
                                *teacher.overrides(),
                                f"teacher.init={teacher_ckpt[variant, teacher.name]}",
                                f"student.init={run_dir / 'checkpoints'}",
                                f"logging.run_dir={run_dir}",
                            ],
                            run_dir / f"test_{variant}_{teacher.name}.json",
                            "held-out measurement",
                            deps=[train_name, f"teacher-{teacher.name}{suffix}-s{seed}"],
                            max_batches=design.test_batches if variant == GENERAL else design.transfer.test_batches,
                        )
                    )
    return _with_specs(jobs, data_fingerprint), cells


def _with_specs(jobs: list[Job], data_fingerprint: dict) -> list[Job]:
    """Each job's spec: a hash of its resolved configuration (not its overrides: an edit of configs/paper_mini.yaml
    reruns what it changes), its measurement size, the data and its dependencies' specs."""
    from taidtron.config import load_config

    specs: dict[str, str] = {}
    out = []
    for job in jobs:  # dependencies come first in the list
        payload = {
            "kind": job.kind,
            "config": load_config(CONFIG, job.overrides).to_dict(),
            "max_batches": job.max_batches,
            "data": data_fingerprint,
            "deps": [specs[d] for d in job.deps],
        }
        specs[job.name] = hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]
        out.append(replace(job, spec=specs[job.name]))
    return out


def finished(job: Job) -> dict | None:
    """The job's marker when it holds this spec (a finished, still valid run), else None."""
    marker = read_json(job.marker)
    return marker if marker and marker.get("spec") == job.spec else None
