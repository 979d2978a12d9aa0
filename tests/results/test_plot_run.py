"""`tools/plot_run.py`: the curves of real runs (a TAID distillation and an LM run) to one PNG, overlaid."""

from __future__ import annotations

import struct

from taidtron.plots import load_run, run_panels
from tests.support import run_cli


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_panels_follow_what_each_run_logged(tiny_runs):
    distill, student = load_run(tiny_runs["distill"]), load_run(tiny_runs["student"])
    panels = {p.ylabel: p for p in run_panels([distill, student])}
    assert list(panels) == [
        "loss",
        "taid_t",
        "lr",
        "grad_norm",
        "valid_student_lm_loss",
        "valid_kl_teacher_student",
        "valid_distill_loss",
        "valid_teacher_lm_loss",
    ]
    assert [line.label for line in panels["loss"].lines] == ["distill", "student"]
    assert [line.label for line in panels["taid_t"].lines] == ["distill"]  # the LM run logs no t
    assert [line.label for line in panels["valid_kl_teacher_student"].lines] == ["distill"]
    t_line = panels["taid_t"].lines[0]
    assert t_line.x == [row["step"] for row in distill.steps] and t_line.y == [row["taid_t"] for row in distill.steps]
    valid = panels["valid_student_lm_loss"].lines[1]
    assert valid.x == [row["step"] for row in student.evals] == [5, 10]


def test_two_runs_to_one_png(tiny_runs, tmp_path):
    out = tmp_path / "plots" / "both.png"
    proc = run_cli(
        "tools/plot_run.py",
        str(tiny_runs["distill"]),
        str(tiny_runs["student"]),
        "--out",
        str(out),
        "--labels",
        "taid",
        "lm",
        "--title",
        "tiny",
    )
    assert f"wrote {out}" in proc.stdout
    width, height = png_size(out)
    assert width > 1000 and height > 1200  # 2 columns x 4 rows of panels
    assert not list(out.parent.glob(".*tmp"))  # written atomically, nothing left behind


def test_default_output_is_next_to_the_first_run(tiny_runs):
    run_cli("tools/plot_run.py", str(tiny_runs["student"]))
    width, height = png_size(tiny_runs["student"] / "plots.png")
    assert width > 1000 and height > 700


def test_bad_input_exits_2_with_one_line(tiny_runs, tmp_path):
    for args, message in (
        (["/nonexistent/run"], "has no metrics.jsonl"),
        ([str(tiny_runs["student"]), "--labels", "a", "b"], "one per RUN_DIR"),
    ):
        proc = run_cli("tools/plot_run.py", *args, "--out", str(tmp_path / "x.png"), expect_ok=False)
        assert proc.returncode == 2 and message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (
            proc.stderr
        )
