"""tools/bench_loss.py on CPU: the five-pass floor from the measured copy bandwidth, and the agreement of every
variant's loss and gradient with the official formula in float64 (its timings are not asserted: speed is measured by
the tool, not by tests)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from taidtron.benchmark import loss as bench
from tests.support import REPO_ROOT, run_cli


def test_cpu_run_reports_the_floors_and_that_every_variant_agrees(tmp_path):
    out = tmp_path / "loss.json"
    proc = run_cli(
        str(REPO_ROOT / "tools" / "bench_loss.py"),
        *("--tokens", "48", "--vocab", "700", "--dtype", "bf16", "--repeats", "2", "--warmup", "1"),
        *("--json", str(out)),
        timeout=300,
    )
    data = json.loads(out.read_text())
    info, rows = data["info"], {r["variant"]: r for r in data["results"]}
    assert list(rows) == ["official", "chunked", "copy"]
    assert info["gradient_bytes"] == 48 * 700 * 2
    assert info["floor_5_passes_ms"] == pytest.approx(5 * info["gradient_bytes"] / info["bandwidth_bytes_per_s"] * 1e3)
    assert info["floor_3_passes_ms"] == pytest.approx(info["floor_5_passes_ms"] * 3 / 5)
    for variant in ("official", "chunked"):
        r = rows[variant]
        assert r["agrees"] is True and r["grad_error_relative_to_max"] < bench.GRAD_TOLERANCE["bf16"]
        assert r["vs_floor_5_passes"] == pytest.approx(r["median_ms"] / info["floor_5_passes_ms"])
    assert rows["official"]["loss_relative_to_official"] == 0.0
    assert info["all_agree"] is True and "all agree" in proc.stdout and "5 (a separate backward" in proc.stdout


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_agreement_flags_a_gradient_off_by_more_than_its_dtype_allows(tmp_path, dtype):
    """The comparison itself, on rows whose right gradient is known: the float64 formula's, written as a variant
    would write it (rounded to the dtype); then the same with a 2% error at one element."""
    args = argparse.Namespace(t=0.4, tokens=100, dtype=dtype)
    generator = torch.Generator().manual_seed(0)
    student, teacher = (
        torch.randn(bench.SAMPLED_ROWS, 300, generator=generator, dtype=torch.float64) * 2 for _ in "st"
    )
    torch.save({"student": student, "teacher": teacher}, tmp_path / "inputs.pt")
    exact = (torch.softmax(student, -1) - torch.softmax(0.6 * student + 0.4 * teacher, -1)) / args.tokens
    rounded = exact.to(getattr(torch, bench.DTYPES[dtype])).double()
    wrong = rounded.clone()
    wrong[3, 7] += 0.02 * exact.abs().max()
    for name, rows, loss in (
        ("official", rounded, 5.0),
        ("chunked", rounded, 5.0 * (1 + 5e-5)),
        ("triton", wrong, 5.0),
    ):
        torch.save({"loss": loss, "grad_rows": rows}, tmp_path / f"{name}.pt")
    found = bench.agreement(tmp_path, args, ["official", "chunked", "triton", "copy"])
    assert set(found) == {"official", "chunked", "triton"}
    assert found["official"]["agrees"] and found["chunked"]["agrees"] and not found["triton"]["agrees"]
    assert found["triton"]["grad_error_relative_to_max"] == pytest.approx(0.02, rel=0.2)
    torch.save({"loss": 5.0 * (1 + 2e-4), "grad_rows": rounded}, tmp_path / "chunked.pt")
    assert not bench.agreement(tmp_path, args, ["official", "chunked"])["chunked"]["agrees"]  # the loss is off
