"""tools/gpu_check.py without a GPU: the plan (--dry-run), the runner (budgets, the deadline, a hung check killed
with its process group, the JSON report and the table) and the readers of each check's result. The GPU checks
themselves run only where `make gpu-check` finds a device."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.support import REPO_ROOT, run_cli

SCRIPT = REPO_ROOT / "tools" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    return runpy.run_path(str(SCRIPT))


def test_dry_run_lists_every_check_with_budget_and_command(gpu_check, tmp_path):
    proc = run_cli(str(SCRIPT), "--dry-run", "--out", str(tmp_path / "report.json"))
    names = [c.name for c in gpu_check["CHECKS"]]
    assert {
        "versions",
        "gpu_tests",
        "loss_bench",
        "smoke",
        "throughput_72b_width",
        "host_syncs",
        "inf_gradient",
        "step_overhead",
        "throughput_7b",
        "te_vs_local",
        "dp_overlap",
    } == set(names)
    for name in names:
        assert f"  {name} " in proc.stdout
    assert "tools/bench_loss.py --tokens 8192 --vocab 151936 --dtype bf16 --device cuda --compile" in proc.stdout
    assert "-m pytest -q -m gpu tests" in proc.stdout
    assert sum(c.budget_s for c in gpu_check["CHECKS"] if c.name != "dp_overlap") > 480  # the deadline decides
    assert not (tmp_path / "report.json").exists()


def test_without_a_gpu_the_report_says_so_check_by_check(tmp_path):
    out = tmp_path / "report.json"
    proc = run_cli(str(SCRIPT), "--only", "versions,gpu_tests", "--out", str(out), expect_ok=False, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    versions, tests = report["checks"]
    assert versions["status"] == "fail" and "no CUDA device" in versions["summary"]
    installed = version("megatron-core")  # 0.16.1 on Python 3.11, 0.19.2 on 3.12
    assert versions["metrics"]["megatron_core"] == installed and versions["metrics"]["gloo_side_groups"] is True
    assert (tests["status"], tests["summary"]) == ("not_run", "no CUDA device visible")
    table = proc.stdout[proc.stdout.index("check ") :]
    assert "versions" in table and "gpu_tests" in table and "0/2 checks pass" in proc.stdout


def test_deadline_leaves_checks_not_run(tmp_path):
    out = tmp_path / "report.json"
    proc = run_cli(str(SCRIPT), "--only", "versions", "--deadline", "0.001", "--out", str(out), expect_ok=False)
    assert proc.returncode == 1
    (record,) = json.loads(out.read_text())["checks"]
    assert record["status"] == "not_run" and record["summary"].startswith("deadline")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--only", "versions,warp_drive"], "unknown check(s) warp_drive"),
        (["--deadline", "0"], "--deadline must be positive"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    proc = run_cli(str(SCRIPT), *args, expect_ok=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {proc.stderr.strip()[7:]}"] and message in proc.stderr


def test_a_hung_check_is_killed_with_its_children_at_its_budget(gpu_check, tmp_path):
    marker = tmp_path / "child.pid"
    code = (
        f"import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; "
        f"time.sleep(60)']); open({str(marker)!r}, 'w').write(str(c.pid)); time.sleep(60)"
    )
    check = gpu_check["Check"]("hung", "sleeps", 60, ["-c", code], needs_gpu=False)
    start = time.monotonic()
    # The budget leaves a loaded machine time to start both processes before the check is stopped.
    record = gpu_check["run_check"](check, 15.0, tmp_path)
    assert record["status"] == "timeout" and time.monotonic() - start < 45
    status = Path(f"/proc/{int(marker.read_text())}/status")
    time.sleep(0.5)
    # gone, or a zombie waiting to be reaped by whoever adopted it (killed either way)
    assert not status.exists() or "State:\tZ" in status.read_text(), "the hung check's child survived"


def test_pytest_results_are_read_test_by_test(gpu_check, tmp_path):
    (tmp_path / "test_sample.py").write_text("def test_good():\n    pass\n\ndef test_bad():\n    assert False\n")
    xml = tmp_path / "junit.xml"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            str(tmp_path / "test_sample.py"),
            "-p",
            "no:cacheprovider",
            f"--junitxml={xml}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    metrics, status, summary = gpu_check["PARSERS"]["pytest"](xml, proc.stdout, proc.returncode)
    assert status == "fail" and (metrics["passed"], metrics["failed"]) == (1, 1)
    assert "test_bad" in summary


def test_smoke_summary_is_read_for_tokens_per_second_and_mfu(gpu_check, tmp_path):
    summary = REPO_ROOT / "tools" / "smoke_test.py"  # the lines it prints (tools/smoke_test.py `summarize`)
    assert "tokens/s (median)" in summary.read_text() and "MFU (median)" in summary.read_text()
    output = "tokens/s (median)         1,234,567\nMFU (median)              12.500%\n[PASS] a\n[PASS] b\n"
    metrics, status, text = gpu_check["PARSERS"]["smoke"](tmp_path / "none", output, 0)
    assert status == "pass" and metrics["tokens_per_s"] == 1234567 and metrics["mfu"] == pytest.approx(0.125)
    assert "2/2 smoke checks pass" in text
    _, status, _ = gpu_check["PARSERS"]["smoke"](tmp_path / "none", output.replace("MFU", "xx"), 0)
    assert status == "fail"  # on a GPU the smoke test must report MFU
