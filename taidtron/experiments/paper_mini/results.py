"""The raw results (`paper_mini.json`): everything the page shows, read from the runs' own files (metrics.jsonl,
eval.jsonl, the resolved config.yaml, the test measurements), so the page can be rewritten from it alone."""

from __future__ import annotations

import dataclasses
import math
import statistics

from taidtron.experiments.paper_mini.design import ARMS, Design
from taidtron.experiments.paper_mini.jobs import Cell, Job
from taidtron.experiments.paper_mini.paths import CONFIG, read_json, rel

VALID_KEYS = ("valid_student_lm_loss", "valid_kl_teacher_student")
"""The validation curves kept per distillation run."""
PER_RUN_KEYS = ("seed", "data.seed", "taid.loss", "taid.adaptive", "student.init", "teacher.init", "logging.run_dir")
"""Keys the experiment sets per distillation run; every other key of a run's resolved config is
configs/paper_mini.yaml's (plus the design's run_overrides and the data paths)."""


def _curve(rows: list[dict], key: str, every: int = 1) -> list[list[float]]:
    points = [[r["step"], r[key]] for r in rows if key in r]
    return [p for i, p in enumerate(points) if i % every == 0 or i == len(points) - 1]


def _rows(path) -> list[dict]:
    from taidtron.plots import read_jsonl

    return read_jsonl(path) if path.is_file() else []


def _config(job: Job) -> dict:
    import yaml

    path = job.run_dir / "config.yaml"
    return yaml.safe_load(path.read_text()) if path.is_file() else {}


def model_params(arch: dict, vocab_size: int) -> int:
    """Parameters of one model (one process, no padding beyond megatron's 128)."""
    from taidtron.config import ModelConfig
    from taidtron.plan import stage_parameters

    model = ModelConfig(**arch, vocab_size=vocab_size)
    return stage_parameters(model, tp=1, pp=1, stage=0, padded_vocab=math.ceil(vocab_size / 128) * 128)


def _architecture(section: dict) -> dict:
    return {k: v for k, v in section.items() if k not in ("init", "vocab_size", "attention")}


def _pretraining(job: Job, result: dict) -> dict:
    rows = _rows(job.run_dir / "metrics.jsonl")
    return {
        "final_train_loss": rows[-1]["loss"] if rows else None,
        "valid": _curve(_rows(job.run_dir / "eval.jsonl"), "valid_student_lm_loss"),
        "wall_s": result.get("wall_s"),
        "cpu_s": result.get("cpu_s"),
    }


def collect(design: Design, jobs: list[Job], cells: list[Cell], results: dict, data: dict, timing: dict) -> dict:
    """One record per test cell and per training run, the models, the resolved configs and the timing."""
    by_name = {job.name: job for job in jobs}
    ok = {name for name, r in results.items() if r.get("ok")}
    student_job = by_name[f"student-s{design.seeds[0]}"]
    student_cfg = _config(student_job)
    student_arch = _architecture(student_cfg.get("student", {}))
    teachers = {}
    for teacher in design.teachers:
        job = by_name[f"teacher-{teacher.name}-s{design.seeds[0]}"]
        arch = _architecture(_config(job).get("student", {}))
        teachers[teacher.name] = {
            "arch": arch,
            "params": model_params(arch, design.vocab_size) if arch else None,
            "pretraining": {
                str(seed): _pretraining(
                    by_name[f"teacher-{teacher.name}-s{seed}"], results.get(f"teacher-{teacher.name}-s{seed}", {})
                )
                for seed in design.seeds
            },
            "finetuning": {
                str(seed): _pretraining(job, results.get(job.name, {}))
                for seed in design.seeds
                if (job := by_name.get(f"teacher-{teacher.name}-target-s{seed}"))
            },
        }
    records = []
    for cell in cells:
        marker = read_json(cell.run_dir / f"test_{cell.variant}_{cell.teacher}.json") or {}
        eval_name = f"eval-{cell.arm}-{cell.variant}-{cell.teacher}-s{cell.seed}"
        records.append(
            {
                **{k: v for k, v in dataclasses.asdict(cell).items() if k != "run_dir"},
                "run_dir": rel(cell.run_dir),
                "ok": eval_name in ok,
                "test": {k.removeprefix("test_"): v for k, v in marker.items() if k.startswith("test_")},
                "test_tokens": marker.get("tokens"),
            }
        )
    runs = []
    for job in jobs:
        if job.run is None:
            continue
        cfg = _config(job)
        rows = _rows(job.run_dir / "metrics.jsonl")
        evals = _rows(job.run_dir / "eval.jsonl")
        runs.append(
            {
                "name": job.name,
                **job.run,
                "ok": job.name in ok,
                "valid": {k: _curve(evals, k) for k in VALID_KEYS if any(k in r for r in evals)},
                "loss": _curve(rows, "loss", every=5),
                "taid_t": _curve(rows, "taid_t"),
                "train_steps": (cfg.get("optim") or {}).get("train_steps"),
                "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows) if rows else None,
                "wall_s": results.get(job.name, {}).get("wall_s"),
                "cpu_s": results.get(job.name, {}).get("cpu_s"),
            }
        )
    sample = next((j for j in jobs if j.run and j.run["arm"] == "taid"), None)
    resolved = _config(sample) if sample else {}
    teacher_resolved = _config(by_name[f"teacher-{design.teachers[0].name}-s{design.seeds[0]}"])
    return {
        "design": dataclasses.asdict(design),
        "arms": {key: {"label": arm.label, "color": arm.color} for key, arm in ARMS.items()},
        "config_file": rel(CONFIG),
        "data": data,
        "timing": timing,
        "student": {
            "arch": student_arch,
            "params": model_params(student_arch, design.vocab_size) if student_arch else None,
            "pretraining": {
                str(seed): _pretraining(by_name[f"student-s{seed}"], results.get(f"student-s{seed}", {}))
                for seed in design.seeds
            },
        },
        "teachers": teachers,
        "cells": records,
        "runs": runs,
        "config": resolved,
        "per_run_keys": list(PER_RUN_KEYS),
        "pretraining_optim": {"teacher": teacher_resolved.get("optim"), "student": student_cfg.get("optim")},
        "failures": {name: r.get("error") for name, r in results.items() if not r.get("ok")},
    }
