"""tools/gpu_check.py without a GPU: the plan (--dry-run: budgets that add up under a deadline of at most 7 minutes,
the order --only gives), the report on a machine without a GPU, and the runner over fake checks that sleep, hang and
crash (budgets, the deadline, order, every result written as it finishes and kept when the runner is killed, pytest
groups with a per-test timeout). The GPU checks themselves run where `tools/gpu_check.py` finds a device."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from taidtron.benchmark import gpu_check
from tests.support import REPO_ROOT, run_cli, subprocess_env

SCRIPT = REPO_ROOT / "tools" / "gpu_check.py"
FAKES = Path(__file__).with_name("fake_checks.py")
NUMBERS = ["versions", "loss_bench", "throughput_7b", "step_overhead", "smoke"]


def test_dry_run_budgets_fit_a_deadline_of_at_most_seven_minutes_numbers_first(tmp_path):
    proc = run_cli(str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out"))
    names = [c.name for c in gpu_check.CHECKS]
    assert names == [*NUMBERS, "gpu_tests"]  # the numbers first, the pass/fail tests last
    assert gpu_check.DEADLINE_S <= 7 * 60
    assert gpu_check.SETUP_BUDGET_S + sum(c.budget_s for c in gpu_check.CHECKS) <= gpu_check.DEADLINE_S
    rows = [line.split()[0] for line in proc.stdout.splitlines()[1:-1]]
    assert rows == ["setup", *names]
    assert "budgets add up to 420 s (setup included); deadline 420 s: fits" in proc.stdout
    assert "tools/bench_loss.py --tokens 8192 --vocab 151936 --dtype bf16 --device cuda --compile" in proc.stdout
    assert "--pairs 1.5b-7b --device cuda --no-baseline" in proc.stdout
    assert not (tmp_path / "out").exists()  # runs nothing


def test_only_keeps_the_order_given():
    proc = run_cli(str(SCRIPT), "--dry-run", "--only", "gpu_tests,versions")
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:-1]] == ["setup", "gpu_tests", "versions"]


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
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr


@pytest.mark.serial
def test_without_a_gpu_it_says_no_cuda_device_within_a_minute_and_leaves_a_report(tmp_path):
    """torch imports, no CUDA device (CUDA_VISIBLE_DEVICES is empty in tests): setup says so, nothing else starts."""
    out = tmp_path / "report"
    start = time.monotonic()
    proc = run_cli(str(SCRIPT), "--out", str(out), "--work", str(tmp_path / "work"), expect_ok=False, timeout=120)
    assert time.monotonic() - start < 60
    assert proc.returncode == 1 and "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and files == sorted(
        ["summary.txt", "setup.json", *(f"{n}.json" for n in NUMBERS), "gpu_tests.json"]
    )
    setup = json.loads((out / "setup.json").read_text())
    assert setup["status"] == "fail" and setup["summary"].startswith("no CUDA device")
    assert setup["metrics"]["torch"] == torch.__version__ and setup["metrics"]["cuda"] is False
    summary = (out / "summary.txt").read_text()
    assert summary.count("  not_run  ") == 6 and "1 fail, 6 not_run" in summary


def _wheel(folder: Path, name: str) -> Path:
    """A minimal pure-Python wheel holding package `name` (VALUE = 7)."""
    import zipfile

    folder.mkdir()
    path = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": "VALUE = 7\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as wheel:
        for arcname, text in files.items():
            wheel.writestr(arcname, text)
        wheel.writestr(f"{info}/RECORD", "".join(f"{a},,\n" for a in files) + f"{info}/RECORD,,\n")
    return path


def test_the_wheel_folder_is_installed_offline_into_the_site_the_checks_import_from(tmp_path):
    """What setup does when megatron-core is missing, with a stand-in wheel: pip, no index, no dependencies."""
    site = tmp_path / "site"
    _wheel(tmp_path / "wheels", "taidtron_stand_in")
    message = gpu_check.install_wheels(tmp_path / "wheels", site, time.monotonic() + 120)
    assert message == f"installed taidtron_stand_in-1.0-py3-none-any.whl into {site}"
    imported = subprocess.run(
        [sys.executable, "-c", "import taidtron_stand_in, taidtron; print(taidtron_stand_in.VALUE)"],
        env=gpu_check.check_env(site),
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert imported.stdout.strip() == "7", imported.stderr
    empty = gpu_check.install_wheels(tmp_path / "none", site, time.monotonic() + 10)
    assert empty.startswith("no wheels in") and "docs/performance.md" in empty


# ---- the runner over fake checks -------------------------------------------------------------------------------------


def _run_fakes(tmp_path: Path, deadline: float, *specs: str) -> tuple[subprocess.CompletedProcess, dict]:
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, str(FAKES), "commands", str(out), str(work), str(deadline), *specs],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")}


def _gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "State:\tZ" in status.read_text()


def test_checks_run_in_order_a_crash_fails_alone_and_a_hang_is_killed_with_its_child_at_its_end(tmp_path):
    proc, records = _run_fakes(tmp_path, 21, "quick:5", "crash:5", "hang:6", "quick2:5")
    assert [line.split()[0] for line in proc.stdout.splitlines() if not line.startswith(("==", " "))] == [
        "quick",
        "crash",
        "hang",
        "quick2",
    ]
    assert records["quick"]["status"] == records["quick2"]["status"] == "pass"
    assert records["crash"]["status"] == "fail" and "exit 3: boom" in records["crash"]["summary"]
    assert records["hang"]["status"] == "timeout"
    # the hang may use its own 6 s and what quick and crash left of theirs, never quick2's 5 s
    assert 6 <= records["hang"]["seconds"] <= 16.5 and records["quick2"]["seconds"] < 5
    pids = [int(p) for p in (tmp_path / "work" / "hang.pids").read_text().split()]
    time.sleep(0.5)
    assert all(_gone(pid) for pid in pids), "the hung check or its child survived"
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert [line.split()[0] for line in summary.splitlines()[2:6]] == ["quick", "crash", "hang", "quick2"]


def test_time_a_check_leaves_goes_to_later_ones_and_what_cannot_start_before_the_deadline_is_not_run(tmp_path):
    # slow needs 3 s against a budget of 1: it gets what quick left (quick's 15 s leave room for slow interpreter
    # starts on a loaded machine). After hang takes all it may, quick3 cannot start.
    _, records = _run_fakes(tmp_path, 22, "quick:15", "slow:1", "hang:6", "quick3:0.5")
    assert records["slow"]["status"] == "pass" and records["slow"]["seconds"] >= 3
    assert records["hang"]["status"] == "timeout"
    assert records["quick3"]["status"] == "not_run" and records["quick3"]["summary"].startswith("deadline")


def test_a_check_stopped_at_its_end_keeps_the_result_it_had_written(tmp_path):
    _, records = _run_fakes(tmp_path, 4, "partial:4")
    assert records["partial"]["status"] == "timeout"
    assert records["partial"]["summary"] == f"stopped at {records['partial']['seconds']:.0f} s; slept 0 s"


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_results_that_finished_survive_a_killed_runner_and_its_checks_die_with_it(tmp_path, signum):
    out, work = tmp_path / "out", tmp_path / "work"
    runner = subprocess.Popen(
        [sys.executable, str(FAKES), "commands", str(out), str(work), "300", "quick:5", "quick2:5", "hang:200"],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while not (work / "hang.pids").is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    os.kill(runner.pid, signum)
    _, stderr = runner.communicate(timeout=30)
    assert runner.returncode == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signal.SIGTERM)
    assert sorted(p.name for p in out.iterdir()) == ["quick.json", "quick2.json", "summary.txt"]
    assert json.loads((out / "quick2.json").read_text())["status"] == "pass"
    summary = (out / "summary.txt").read_text()
    assert "quick2" in summary and "hang" not in summary
    check, grandchild = (int(p) for p in (work / "hang.pids").read_text().split())
    time.sleep(1.0)
    assert _gone(check), "the running check outlived the runner"
    if signum == signal.SIGTERM:  # the runner kills the check's process group
        assert _gone(grandchild) and b"results so far are in" in stderr
    else:  # a runner killed outright cannot: its child dies (parent-death signal), a grandchild on its own may not
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)


def _run_fake_tests(tmp_path: Path, budget: float, test_timeout: float, files: dict[str, str]) -> dict:
    """One test check over `files` ({name: source}), each file its own group named after it; its JSON record."""
    tests, out, work = tmp_path / "tests", tmp_path / "out", tmp_path / "work"
    tests.mkdir()
    for name, source in files.items():
        (tests / f"test_{name}.py").write_text(source)
    groups = [f"{name}:test_{name}.py" for name in files]
    proc = subprocess.run(
        [sys.executable, str(FAKES), "tests", str(out), str(work), str(budget), str(test_timeout), str(tests), *groups],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "tests.json").read_text())


def test_pytest_groups_run_side_by_side_and_a_hang_costs_one_test(tmp_path):
    record = _run_fake_tests(
        tmp_path,
        60,
        5,
        {
            "a": "import time\n\ndef test_pass():\n    pass\n\ndef test_hang():\n    time.sleep(600)\n\n"
            "def test_after():\n    pass\n",
            "b": "import os\n\ndef test_exit():\n    os._exit(1)\n",
            "c": "import pytest\n\ndef test_skip():\n    pytest.skip('no TE here')\n",
            "d": "VALUE = 1\n",  # no test at all: a wrong path or marker must not read as a pass
        },
    )
    groups = record["metrics"]["groups"]
    assert {n: o["outcome"] for n, o in groups["a"]["tests"].items()} == {
        "test_a::test_pass": "passed",
        "test_a::test_hang": "failed",
        "test_a::test_after": "passed",
    }
    assert "Timeout" in groups["a"]["tests"]["test_a::test_hang"]["message"]
    assert groups["b"]["status"] == "no_result" and groups["c"]["tests"]["test_c::test_skip"]["outcome"] == "skipped"
    assert record["status"] == "fail" and record["seconds"] < 30  # side by side: the 5 s timeout once, not per group
    assert "failed: test_a::test_hang" in record["summary"] and "ended without a junit file: b" in record["summary"]
    assert "skipped: test_c::test_skip (" in record["summary"] and "no TE here" in record["summary"]
    assert record["summary"].endswith("; collected no test: d")


def test_a_group_still_running_at_the_checks_end_is_stopped_and_the_others_results_stay(tmp_path):
    record = _run_fake_tests(
        tmp_path,
        15,
        300,
        {"slow": "import time\n\ndef test_slow():\n    time.sleep(600)\n", "fast": "def test_fast():\n    pass\n"},
    )
    assert record["status"] == "timeout" and 15 <= record["seconds"] < 40
    assert record["metrics"]["groups"]["slow"]["status"] == "timeout"
    assert record["metrics"]["groups"]["fast"]["tests"]["test_fast::test_fast"]["outcome"] == "passed"
    assert "1 passed, 0 failed, 0 skipped; stopped at the check's end, no results: slow" == record["summary"]


# ---- the readers of the benchmarks' results ------------------------------------------------------------------------


def test_the_loss_benchmark_line_has_bandwidth_floor_each_variant_and_agreement(tmp_path):
    result = tmp_path / "loss.json"
    run_cli(
        str(REPO_ROOT / "tools" / "bench_loss.py"),
        *("--tokens", "64", "--vocab", "500", "--repeats", "2", "--warmup", "1", "--json", str(result)),
        timeout=300,
    )
    status, summary, data = gpu_check.read_loss_bench(result, "", 0)
    info = data["info"]
    assert status == "pass" and info["all_agree"] is True
    assert summary.startswith(f"copy {info['bandwidth_bytes_per_s'] / 1e12:.2f} TB/s, 5-pass floor ")
    for r in data["results"][:2]:
        assert f"{r['variant']} {r['median_ms']:.2f} ms / {r['extra_peak_bytes'] / 1e9:.2f} GB" in summary
    assert summary.endswith("losses and gradients agree")
    data["results"][1]["agrees"], data["info"]["all_agree"] = False, False
    result.write_text(json.dumps(data))
    status, summary, _ = gpu_check.read_loss_bench(result, "", 0)
    assert status == "fail" and summary.endswith(f"DISAGREE: {data['results'][1]['variant']}")


def test_smoke_summary_is_read_for_tokens_per_second_and_mfu(tmp_path):
    printed = (REPO_ROOT / "tools" / "smoke_test.py").read_text()  # the lines `summarize` prints
    assert "tokens/s (median)" in printed and "MFU (median)" in printed
    output = "tokens/s (median)         1,234,567\nMFU (median)              12.500%\n[PASS] a\n[PASS] b\n"
    status, text, metrics = gpu_check.read_smoke(tmp_path / "none", output, 0)
    assert metrics["tokens_per_s"] == 1234567 and metrics["mfu"] == pytest.approx(0.125)
    assert status == "pass" and "2/2 smoke checks pass" in text
    assert gpu_check.read_smoke(tmp_path, output.replace("MFU", "xx"), 0)[0] == "fail"  # a GPU run must report MFU
