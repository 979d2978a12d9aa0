"""A tiny fixed run reproduces its recorded loss curve (tests/assets/losses/tiny_cpu_fp32.txt: step, loss, t).

Catches any unintended change to initialisation, data order, the loss, the schedule or the optimizer. After an
intended change, regenerate the file and say why in the commit:
    TAIDTRON_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/train/test_golden_loss_curve.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.support import REPO_ROOT, subprocess_env

from .test_training_run import TINY

GOLDEN = REPO_ROOT / "tests" / "assets" / "losses" / "tiny_cpu_fp32.txt"
STEPS = 12


def test_tiny_run_reproduces_the_recorded_loss_curve(tmp_path):
    # the smoke test's two stages in miniature: a teacher pretrained for 30 steps, then 12 TAID steps
    overrides = [o for o in TINY if o != "teacher.init=null"]
    proc = subprocess.run(
        [
            sys.executable,
            "tools/smoke_test.py",
            "--run-dir",
            str(tmp_path),
            "--teacher-steps",
            "30",
            *overrides,
            f"optim.train_steps={STEPS}",
            "optim.warmup_steps=2",
            "optim.lr=1e-2",
            "logging.eval_interval=0",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "distill" / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["loss"], r["taid_t"]) for r in rows]
    if os.environ.get("TAIDTRON_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text("".join(f"{step} {loss!r} {t!r}\n" for step, loss, t in curve))
        pytest.fail(f"rewrote {GOLDEN}; rerun without TAIDTRON_UPDATE_GOLDEN")
    golden = [line.split() for line in GOLDEN.read_text().splitlines()]
    assert [int(g[0]) for g in golden] == [c[0] for c in curve]
    for (step, loss, t), (_, golden_loss, golden_t) in zip(curve, golden):
        # fp32 CPU sums may reorder with the thread count; a real change moves the curve by far more than this
        assert loss == pytest.approx(float(golden_loss), rel=2e-4), f"step {step}"
        assert t == pytest.approx(float(golden_t), rel=1e-6, abs=1e-9), f"step {step}"
    assert curve[-1][1] < curve[0][1], "the recorded run must learn something"
