"""`python -m taidtron.evaluate`: held-out numbers of trained checkpoints, through the trainer's own evaluation."""

from __future__ import annotations

import json

import pytest

from taidtron.plots import read_jsonl
from tests.results.helpers import COMMON, STUDENT, TEACHER
from tests.support import REPO_ROOT, run_cli, run_torchrun

WORKER = REPO_ROOT / "tests" / "results" / "eval_worker.py"


def pair_overrides(tiny_runs) -> list[str]:
    """The tiny student measured against the tiny teacher (fkl: a distillation objective, so the teacher is built)."""
    return [
        *STUDENT,
        *TEACHER,
        "taid.loss=fkl",
        f"student.init={tiny_runs['student'] / 'checkpoints'}",
        f"teacher.init={tiny_runs['teacher'] / 'checkpoints'}",
    ]


@pytest.mark.multiprocess
def test_test_split_metrics_on_two_data_parallel_ranks_equal_a_float64_reference(tiny_runs):
    results = run_torchrun(
        WORKER, 2, *COMMON[2:], *pair_overrides(tiny_runs), "parallel.micro_batch_size=2", timeout=600
    )
    for rank in results:
        assert rank["dp"] == 2
        result, ref = rank["result"], rank["reference"]
        assert result["split"] == "test" and result["batches"] == ref["batches"] >= 2
        assert result["tokens"] == ref["tokens"] == ref["batches"] * 8 * 64
        for key in ("student_lm_loss", "teacher_lm_loss", "kl_teacher_student", "student_entropy", "teacher_entropy"):
            assert result[f"test_{key}"] == pytest.approx(ref[key], rel=2e-5), key
        # the argmax of fp32 logits and of their float64 log-softmax: a near-tie may flip a token or two
        assert result["test_top1_agreement"] == pytest.approx(ref["top1_agreement"], abs=2 / ref["tokens"])
        assert 0 < ref["top1_agreement"] < 1
        # fkl is KL(teacher || student): the distillation loss and the KL are one number
        assert result["test_distill_loss"] == pytest.approx(result["test_kl_teacher_student"], rel=1e-6)
    assert results[0]["result"] == results[1]["result"]  # every rank holds the global means


def test_valid_split_reproduces_the_runs_final_validation_and_the_json_lands_in_out(tiny_runs, tmp_path):
    out = tmp_path / "valid.json"
    proc = run_cli(
        "-m",
        "taidtron.evaluate",
        *COMMON,
        *STUDENT,
        "taid.loss=lm",
        "--split",
        "valid",
        "--out",
        str(out),
        f"student.init={tiny_runs['student'] / 'checkpoints'}",
        timeout=600,
    )
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(out.read_text()) == printed
    final = [row for row in read_jsonl(tiny_runs["student"] / "eval.jsonl") if row.get("final")][-1]
    assert printed["batches"] == 3
    assert set(printed) == {"split", "batches", "tokens", "valid_student_lm_loss", "valid_student_entropy"}
    assert printed["valid_student_lm_loss"] == pytest.approx(final["valid_student_lm_loss"], rel=1e-6)


def test_a_trained_teacher_scores_below_an_untrained_student_on_the_test_split(tiny_runs):
    """The held-out numbers move with training: the teacher (30 steps) beats the student (10 steps)."""
    proc = run_cli("-m", "taidtron.evaluate", *COMMON, *pair_overrides(tiny_runs), "--max-batches", "2", timeout=600)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["batches"] == 2
    assert result["test_teacher_lm_loss"] < result["test_student_lm_loss"]
    assert result["test_kl_teacher_student"] > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["taid.loss=lm"], "student.init"),
        (["taid.loss=lm", "student.init=/nonexistent/ckpt"], "/nonexistent/ckpt"),
        (["taid.loss=lm", "data.split=95,5,0", "student.init={student}"], "no test share"),
        (["taid.loss=fkl", "teacher.init=null", "student.init={student}"], "teacher.init"),
    ],
)
def test_bad_input_exits_2_with_one_line(tiny_runs, overrides, message):
    overrides = [o.format(student=tiny_runs["student"] / "checkpoints") for o in overrides]
    proc = run_cli("-m", "taidtron.evaluate", *COMMON, *STUDENT, *overrides, expect_ok=False, timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("taidtron:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
