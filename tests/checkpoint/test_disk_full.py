"""A save that runs out of disk space, on a real small file system (a tmpfs mounted for the test): one message
naming the directory and the free space, exit code 2, the temporary directory removed, the previous checkpoint
intact and resumable once there is room."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from taidtron import checkpoint
from tests.support import run_cli
from tests.train.test_training_run import TINY

from .helpers import run_train

ARGS = [
    "--config",
    "configs/smoke.yaml",
    *TINY,
    "checkpoint.save_interval=1",
    "checkpoint.keep_last=2",
    "logging.eval_interval=0",
    "optim.warmup_steps=1",
]


def _mount_command() -> list[str] | None:
    """`mount` as root, else through passwordless sudo; None when neither works here."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


@contextlib.contextmanager
def small_file_system(path: Path, size: int):
    """A tmpfs of `size` bytes at `path`, unmounted afterwards; `remount(size)` resizes it."""
    prefix = _mount_command()
    if prefix is None:
        pytest.skip("mounting a tmpfs needs root or passwordless sudo")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run([*prefix, "mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    if prefix:
        subprocess.run([*prefix, "chmod", "777", str(path)], check=True)

    def remount(new_size: int) -> None:
        subprocess.run([*prefix, "mount", "-o", f"remount,size={new_size}", str(path)], check=True)

    try:
        yield remount
    finally:
        subprocess.run([*prefix, "umount", "-l", str(path)], check=False)


def _size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())


# Intermittent: it passed and failed alternately in four runs (2026-11-29, a machine overloaded by a thread leak
# since fixed), then passed 8 of 9 runs (each beside another heavy job); the one failure was in a `make test` run with
# two pytest workers: no rank of the job on the full tmpfs exited with code 2. Which write meets ENOSPC first in that
# case, and how that rank reports it, is not yet found (the assertion now prints the job's output for it).
# Deselected by `make test` until it is; `pytest -m intermittent tests` runs it.
@pytest.mark.intermittent
def test_a_save_that_runs_out_of_space_keeps_the_previous_checkpoint_and_says_so(tmp_path):
    # One checkpoint of this run, measured on the ordinary disk at the same layout (2 data-parallel ranks).
    measure = tmp_path / "measure"
    run_train([*ARGS, "optim.train_steps=2", f"logging.run_dir={measure}"], nproc=2)
    one = _size(measure / "checkpoints" / "iter_0000001")

    # Room for one and a half checkpoints: the save at step 1 fits, the one at step 2 does not.
    fs = tmp_path / "fs"
    ckpt_dir = fs / "checkpoints"
    with small_file_system(fs, (one * 3 // 2 // 4096 + 1) * 4096) as remount:
        run_dir = tmp_path / "run"
        args = [*ARGS, "optim.train_steps=3", f"logging.run_dir={run_dir}", f"checkpoint.dir={ckpt_dir}"]
        proc = run_train(args, nproc=2, expect_ok=False)
        assert proc.returncode != 0
        output = f"STDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-8000:]}"
        assert "exitcode  : 2" in proc.stdout + proc.stderr, output  # every rank exits 2 (torchrun itself exits 1)
        lines = [line for line in proc.stderr.splitlines() if line.startswith("taidtron: error:")]
        assert lines, proc.stderr[-4000:]
        message = lines[0]
        print(message)
        assert f"no space left on the file system of {ckpt_dir} while saving step 2" in message
        assert "MiB free after removing the partial save" in message
        assert f"{ckpt_dir / 'iter_0000001'} is still the latest checkpoint" in message
        assert not re.search(r"\[rank\d\]: Traceback", proc.stderr)  # torchrun's own report aside, no traceback

        # The partial save is gone, the previous checkpoint is complete and still `latest`.
        assert sorted(p.name for p in ckpt_dir.iterdir()) == ["iter_0000001", "latest"]
        assert checkpoint.verify_checkpoint(ckpt_dir).step == 1

        # With room again, the same command resumes from it and finishes (one process: the layout may change).
        remount(one * 5)
        proc = run_cli("-m", "taidtron.train", *args)
        assert f"resumed from {ckpt_dir / 'iter_0000001'} at step 1" in proc.stdout + proc.stderr
        assert (ckpt_dir / "latest").read_text() == "iter_0000003"
