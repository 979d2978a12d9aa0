"""Tiny real runs of the trainer on the shipped smoke corpus, shared by the evaluation and plotting tests: a
teacher and a student pretrained with `taid.loss=lm`, and a TAID distillation from that teacher. data.split keeps
a test share (training never reads it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import run_cli

SPLIT = "data.split=90,5,5"
COMMON = [
    "--config",
    "configs/smoke.yaml",
    SPLIT,
    "data.seq_length=64",
    "parallel.micro_batch_size=4",
    "parallel.global_batch_size=8",
    "logging.wandb_mode=disabled",
    "logging.eval_iters=3",
    "checkpoint.save_interval=0",
    "optim.lr=5e-3",
    "optim.min_lr=5e-4",
    "optim.warmup_steps=2",
]
STUDENT = [
    "student.num_layers=2",
    "student.hidden_size=64",
    "student.num_attention_heads=4",
    "student.num_query_groups=2",
    "student.ffn_hidden_size=128",
]
TEACHER = [
    "teacher.family=qwen2",
    "teacher.num_layers=2",
    "teacher.hidden_size=96",
    "teacher.num_attention_heads=4",
    "teacher.num_query_groups=2",
    "teacher.ffn_hidden_size=192",
    "teacher.tie_embeddings=false",
]


def as_student(teacher_overrides: list[str]) -> list[str]:
    return [o.replace("teacher.", "student.", 1) for o in teacher_overrides]


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_runs")
    runs = {name: root / name for name in ("teacher", "student", "distill")}
    run_cli(
        "-m",
        "taidtron.train",
        *COMMON,
        *as_student(TEACHER),
        "taid.loss=lm",
        "optim.train_steps=30",
        f"logging.run_dir={runs['teacher']}",
        "logging.eval_interval=10",
        timeout=600,
    )
    run_cli(
        "-m",
        "taidtron.train",
        *COMMON,
        *STUDENT,
        "taid.loss=lm",
        "optim.train_steps=10",
        f"logging.run_dir={runs['student']}",
        "logging.eval_interval=5",
        timeout=600,
    )
    run_cli(
        "-m",
        "taidtron.train",
        *COMMON,
        *STUDENT,
        *TEACHER,
        "taid.loss=taid",
        "optim.train_steps=10",
        f"teacher.init={runs['teacher'] / 'checkpoints'}",
        f"logging.run_dir={runs['distill']}",
        "logging.eval_interval=5",
        timeout=600,
    )
    return runs
