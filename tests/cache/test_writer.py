"""`python -m taidtron.cache_teacher`: a job killed with SIGKILL continues where it stopped, separate jobs write
disjoint sample ranges into one cache at the same time, and either way the shards are byte for byte those one
uninterrupted job writes; a cache written at tp 2 (torchrun) holds the tp 1 cache's records. Bad requests end with
one line and exit code 2 before anything is written."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from taidtron.cache.format import read_manifest, read_shard_record, unpack_ids
from tests.cache.conftest import SHARD_SAMPLES, STEPS, one_line_exit_2, run_args, write_cache
from tests.support import REPO_ROOT, free_port, run_cli, subprocess_env

TRAIN_SHARDS = STEPS * 4 // SHARD_SAMPLES  # 24 train samples
ALL_SHARDS = [("train", i) for i in range(TRAIN_SHARDS)] + [("valid", 0)]


def cache_command(args: list[str], out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "taidtron.cache_teacher",
        *args,
        "--out",
        str(out),
        "--top-k",
        "8",
        "--shard-samples",
        str(SHARD_SAMPLES),
        *extra,
    ]


def records(directory: Path, split: str, key: str) -> np.ndarray:
    """One tensor of every shard of a split, concatenated in sample order."""
    from safetensors.numpy import load_file

    shards = sorted(directory.glob(f"{split}-*.safetensors"))
    return np.concatenate([load_file(shard)[key] for shard in shards])


def digests(directory: Path) -> dict[tuple[str, int], str]:
    return {(split, i): read_shard_record(directory, split, i).sha256 for split, i in ALL_SHARDS}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, teacher_ckpt):
    """One uninterrupted job: the shards every other way of writing must reproduce."""
    root = tmp_path_factory.mktemp("writer")
    args = run_args(root / "run", teacher_ckpt)
    proc = write_cache(args, root / "reference", "8")
    assert "cache " + str(root / "reference") + " is complete" in proc.stdout
    return root, args, digests(root / "reference")


@pytest.mark.multiprocess
def test_a_job_killed_with_sigkill_continues_where_it_stopped(reference):
    root, args, want = reference
    out = root / "killed"
    job = subprocess.Popen(
        cache_command(args, out, "--shard-samples", "4"),  # 7 shards: time to kill it half way
        cwd=REPO_ROOT,
        env=subprocess_env(MASTER_PORT=str(free_port())),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not (out / "train-000000.json").is_file():
            assert job.poll() is None and time.monotonic() < deadline, "the job ended before its first shard"
            time.sleep(0.05)
        job.kill()
    finally:
        job.kill()
        job.wait()
    written = [p.name for p in out.glob("*.json") if p.name != "manifest.json"]
    assert 1 <= len(written) < 7, written  # killed half way
    proc = run_cli(*cache_command(args, out, "--shard-samples", "4")[1:])  # the same command again
    assert f"{7 - len(written)} shards to write" in proc.stdout
    assert read_manifest(out).shard_samples == 4
    for split in ("train", "valid"):  # the same records as the uninterrupted job's, shard size aside
        for key in ("log_probs", "ids", "tail", "sample_digest"):
            assert np.array_equal(records(out, split, key), records(root / "reference", split, key)), (split, key)


@pytest.mark.multiprocess
def test_separate_jobs_write_disjoint_sample_ranges_of_one_cache_at_the_same_time(reference):
    root, args, want = reference
    out = root / "shared"
    jobs = [
        subprocess.Popen(
            cache_command(args, out, *extra),
            cwd=REPO_ROOT,
            env=subprocess_env(MASTER_PORT=str(free_port())),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for extra in (
            ["--split", "train", "--samples", "0:8"],
            ["--split", "train", "--samples", "8:24"],
            ["--split", "valid"],
        )
    ]
    for job in jobs:
        stdout, stderr = job.communicate(timeout=600)
        assert job.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert digests(out) == want  # byte for byte the single job's shards


@pytest.mark.multiprocess
def test_a_cache_written_at_tp2_holds_the_tp1_records(reference):
    root, args, _ = reference
    out = root / "tp2"
    launcher = [str(REPO_ROOT / "launch/torchrun.sh"), args[1], *cache_command(args, out, "parallel.tp=2")[5:]]
    proc = subprocess.run(  # through the launcher, as docs/teacher_cache.md shows
        launcher,
        cwd=REPO_ROOT,
        env=subprocess_env(NPROC="2", TAIDTRON_MODULE="taidtron.cache_teacher", PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    from safetensors.numpy import load_file

    for split, index in ALL_SHARDS:
        name = f"{split}-{index:06d}.safetensors"
        got, want = load_file(out / name), load_file(root / "reference" / name)
        assert np.array_equal(got["sample_digest"], want["sample_digest"])
        same_ids = (unpack_ids(got["ids"]) == unpack_ids(want["ids"])).mean()
        assert same_ids > 0.99, same_ids  # only near-ties may swap places
        np.testing.assert_allclose(np.sort(got["log_probs"], -1), np.sort(want["log_probs"], -1), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(got["tail"], want["tail"], rtol=1e-4, atol=1e-4)


@pytest.mark.multiprocess
def test_bad_requests_are_refused_with_one_line_before_anything_is_written(reference, teacher_ckpt):
    root, args, _ = reference
    proc = write_cache(args, root / "misaligned", "8", "--samples", "4:12", expect_ok=False)
    one_line_exit_2(proc, "--samples 4:12 must", "shard boundaries")
    assert not list((root / "misaligned").glob("*.safetensors"))
    proc = write_cache(args, root / "reference", "32", expect_ok=False)
    one_line_exit_2(proc, "holds a teacher cache written with other settings", "top_k 8 (this job: 32)")
    proc = write_cache(args, root / "too_many", "5000", expect_ok=False)
    one_line_exit_2(proc, "--top-k 5000 must be between 1 and the vocabulary (1,024)")
    proc = write_cache(args + [f"teacher.cache={root / 'reference'}"], root / "again", "8", expect_ok=False)
    one_line_exit_2(proc, "the cache is what this command writes")
