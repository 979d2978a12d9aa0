"""A save that runs out of disk space, on a real small file system (a tmpfs mounted for the test): one message
naming the directory and the free space, exit code 2, no traceback, nothing left of the failed save, the previous
checkpoint intact and resumable once there is room. Two ways it happens: a save refused before it writes (the
file system has no room for it), and writes that meet a full disk mid-way in megatron-core's writer processes
(`taidtron/checkpoint/failures.py` says why the second was only sometimes recognised)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from taidtron import checkpoint
from tests.support import run_cli, run_torchrun
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
        output = f"STDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-8000:]}"
        assert proc.returncode == 2, output  # the ranks' code (taidtron.torchrun), not torchrun's 1
        assert "Traceback" not in proc.stderr, output
        (message,) = [line for line in proc.stderr.splitlines() if line.startswith("taidtron: error:")]
        print(message)
        assert f"no space left on the file system of {ckpt_dir} for step 2: it needs about" in message, output
        assert "MiB are free, so nothing was written" in message
        assert f"{ckpt_dir / 'iter_0000001'} is still the latest checkpoint" in message

        # The partial save is gone, the previous checkpoint is complete and still `latest`.
        assert sorted(p.name for p in ckpt_dir.iterdir()) == ["iter_0000001", "latest"]
        assert checkpoint.verify_checkpoint(ckpt_dir, contents=True).step == 1

        # With room again, the same command resumes from it and finishes (one process: the layout may change).
        remount(one * 5)
        proc = run_cli("-m", "taidtron.train", *args)
        assert f"resumed from {ckpt_dir / 'iter_0000001'} at step 1" in proc.stdout + proc.stderr
        assert (ckpt_dir / "latest").read_text() == "iter_0000003"


WORKER = Path(__file__).with_name("disk_full_worker.py")


def test_writes_that_meet_a_full_disk_mid_save_end_in_one_message_on_every_rank(tmp_path):
    """The disk fills after the room check passed: the tensor files meet it in megatron-core's writer processes,
    on whichever rank gets there first, mostly inside torch.save (whose error does not say ENOSPC). Every fraction
    of a checkpoint left free ends the same way: SaveError on both ranks, saying no space; step 1 still `latest`."""
    fs = tmp_path / "fs"
    with small_file_system(fs, 16 * 2**20):
        results = run_torchrun(WORKER, 2, str(fs), "0.05,0.25,0.45,0.65,0.85", timeout=900)
    one = results[0]["checkpoint_bytes"]
    for rank, result in enumerate(results):
        for case in result["cases"]:
            where = f"rank {rank}, {case['fraction']:.0%} of {one} bytes free: {case['message']}"
            assert case["raised"] == "SaveError", where
            assert case["message"].startswith(
                f"no space left on the file system of {fs / 'checkpoints'} while saving step 2"
            )
            assert "is still the latest checkpoint" in case["message"], where
            if rank == 0:
                assert case["left"] == ["iter_0000001", "latest"] and case["latest"] == "iter_0000001", where
