"""tools/bench_step.py runs end to end on CPU and reports what docs/performance.md quotes (its timings are not
asserted: speed is measured by the tool, not by tests)."""

from __future__ import annotations

import json

from taidtron.benchmark import gpu_check
from tests.support import REPO_ROOT, run_cli

SCRIPT = REPO_ROOT / "tools" / "bench_step.py"


def test_smoke_pair_reports_the_three_timings_and_their_ratio(tmp_path):
    out = tmp_path / "bench_step.json"
    proc = run_cli(
        str(SCRIPT),
        "--pairs",
        "smoke",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--json",
        str(out),
        "parallel.global_batch_size=8",
        timeout=600,
    )
    (result,) = json.loads(out.read_text())["results"]
    assert result["pair"] == "smoke" and result["device"] == "cpu" and result["precision"] == "float32"
    assert result["micro_batches"] == 2 and result["tokens_per_step"] == 8 * 128
    for key in ("distill_ms", "student_ms", "teacher_ms", "taid_loss_ms", "ce_loss_ms"):
        assert result[key] > 0, key
    parts = result["student_ms"] + result["teacher_ms"]
    assert result["ratio"] == result["distill_ms"] / parts
    # the counts the planner computes from megatron-core's shapes
    from taidtron.config import load_config
    from taidtron.plan import stage_parameters

    cfg = load_config(REPO_ROOT / "configs" / "smoke.yaml")
    for role in ("student", "teacher"):
        expected = stage_parameters(getattr(cfg, role), tp=1, pp=1, stage=0, padded_vocab=1024)
        assert result[f"{role}_params"] == expected, role
    assert "ratio" in proc.stdout and "mfu" not in result  # no MFU without a GPU
    status, summary, _ = gpu_check.read_step_bench(out, proc.stdout, proc.returncode)  # the GPU check's line
    assert status == "pass" and summary.startswith(f"smoke: {result['tokens_per_s']:,.0f} tok/s, ")
    assert f"step ratio {result['ratio']:.3f} (goal <= 1.05: " in summary


def test_unknown_pair_and_a_layout_it_cannot_run_exit_2_with_one_line():
    proc = run_cli(str(SCRIPT), "--pairs", "smoke,huge", expect_ok=False)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: unknown pair(s) huge; choose from smoke, x4, 1.5b-7b, 1.5b-72bw2"
    )
    proc = run_cli(str(SCRIPT), "--pairs", "smoke", "parallel.tp=2", expect_ok=False, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_pair_that_needs_the_whole_gpu_refuses_a_baseline_beside_it():
    """1.5B <- 7B takes about 55-60 GiB: a student-only trainer beside it would not fit on an H100."""
    proc = run_cli(str(SCRIPT), "--pairs", "smoke,1.5b-7b", expect_ok=False)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "error: pair 1.5b-7b needs most of one GPU's memory: its student-only baseline trainer must not be built "
        "beside it (out of memory on an H100); add --no-baseline or leave the pair out"
    )
