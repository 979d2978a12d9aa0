"""Tiny real runs of the trainer on the shipped smoke corpus, shared by the evaluation and plotting tests: a
teacher and a student pretrained with `taid.loss=lm`, and a TAID distillation from that teacher. data.split keeps
a test share (training never reads it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.results.helpers import COMMON, STUDENT, TEACHER, as_student
from tests.support import run_cli


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
