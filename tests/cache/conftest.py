"""Fixtures and helpers of the teacher-cache tests: a tiny distillation on the smoke corpus with an imported Qwen2
teacher (tests/checkpoint/helpers.py), its caches written with the real command, and runs that read them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tests.checkpoint.conftest import teacher_ckpt  # noqa: F401 - the session fixture, shared
from tests.checkpoint.helpers import train_args
from tests.support import run_cli

STEPS = 6
"""Optimizer steps of the runs: 6 x 4 = 24 train samples; validation reads 1 x 4 valid samples."""
SHARD_SAMPLES = 8


def run_args(run_dir: Path, teacher: Path, *extra: str) -> list[str]:
    """The tiny run: 6 steps, checkpoints at 3 and 6, validation at the end."""
    return train_args(run_dir, teacher, f"optim.train_steps={STEPS}", "checkpoint.save_interval=3", *extra)


def write_cache(
    args: list[str], out: Path, top_k: str, *extra: str, expect_ok: bool = True
) -> subprocess.CompletedProcess:
    """`python -m taidtron.cache_teacher` with a run's arguments, 8 samples per shard."""
    return run_cli(
        "-m",
        "taidtron.cache_teacher",
        *args,
        "--out",
        str(out),
        "--top-k",
        top_k,
        "--shard-samples",
        str(SHARD_SAMPLES),
        *extra,
        expect_ok=expect_ok,
    )


def full_weights(checkpoint_dir: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a dist checkpoint, read with torch's own DCP reader (independent of taidtron)."""
    from taidtron.checkpoint import resolve_iteration_dir

    out = tmp_path / f"{checkpoint_dir.parent.name}-{checkpoint_dir.name}.pt"
    dcp_to_torch_save(resolve_iteration_dir(checkpoint_dir), out)
    state = torch.load(out, weights_only=False)
    return {k: v for k, v in state.items() if torch.is_tensor(v) and not k.endswith("_extra_state")}


def one_line_exit_2(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The process ended with exit code 2 and one stderr line holding every fragment; returns the line."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("taidtron:")]
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]
