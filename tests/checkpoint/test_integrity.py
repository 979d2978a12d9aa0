"""Damaged checkpoints raise CheckpointError before anything is loaded; keep-last; RNG round trip; the teacher
source check. The save/load cases run in one worker process on a real student + distributed optimizer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from taidtron import checkpoint
from tests.support import gpu_env, require_gpu, run_torchrun

WORKER = Path(__file__).with_name("ckpt_worker.py")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[bool, str]]:
    (found,) = run_torchrun(WORKER, 1, str(tmp_path_factory.mktemp("ckpt_worker")))
    return {case: (result["ok"], result["message"]) for case, result in found.items()}


def _check(results, case: str, *needles: str) -> str:
    assert case in results, sorted(results)
    ok, message = results[case]
    assert ok, message
    for needle in needles:
        assert needle in message, message
    return message


def test_keep_last_removes_older_iterations(results):
    _check(results, "keep_last")


@pytest.mark.parametrize("what,needle", [("weight", "student "), ("moment", "optimizer exp_avg_sq")])
def test_a_state_holding_nan_or_inf_is_never_saved(results, what, needle):
    """Checked on every rank before anything is written; the previous checkpoint stays `latest`, and the message
    says so."""
    _check(results, f"non_finite:{what}", needle, "was not saved", "iter_0000005 is still the latest checkpoint")


def test_a_kill_during_pruning_leaves_no_partial_iteration(results):
    """keep_last renames an old iteration to a hidden name before deleting it: a kill mid-deletion leaves a
    `.trash_*` (ignored, removed by the next save), never an `iter_*` with files missing."""
    _check(results, "prune_killed")


def test_rng_states_roundtrip(results):
    _check(results, "rng_roundtrip", "on cpu")


@pytest.mark.gpu
def test_gpu_cuda_rng_states_roundtrip(tmp_path):
    """The same worker on a GPU: the CUDA default generator and megatron's CUDA tracker stream rewind on load."""
    require_gpu()
    (found,) = run_torchrun(WORKER, 1, str(tmp_path), env=gpu_env())
    ok, message = found["rng_roundtrip"]["ok"], found["rng_roundtrip"]["message"]
    assert ok and message.startswith("on cuda"), message


@pytest.mark.parametrize(
    "case,needles",
    [
        ("truncated_distcp", ("truncated", ".distcp")),
        ("deleted_distcp", ("missing", ".distcp")),
        ("garbled_meta", ("taidtron.json", "corrupted")),
        ("truncated_index", (".metadata", "truncated")),
        ("deleted_common", ("common.pt", "missing")),
        ("legacy_truncated", ("truncated", "index")),
        ("latest_missing_dir", ("latest", "missing")),
        # bytes overwritten in place, the size unchanged: before digests, this loaded without a word
        ("overwritten_distcp", (".distcp is damaged: its bytes differ from those written", "No complete and intact")),
    ],
)
def test_damaged_checkpoint_raises_and_loads_nothing(results, case, needles):
    """CheckpointError names the damage, and the model's weights are untouched (never a partial load)."""
    _check(results, f"corrupt:{case}", "untouched", *needles)


def test_undamaged_checkpoint_still_loads_exactly(results):
    _check(results, "intact_after_corrupt_attempts")


def test_a_checkpoint_without_digests_still_loads(results):
    """Written before taidtron recorded digests: its sizes and index are checked, its bytes cannot be."""
    _check(results, "loads_without_digests")


def test_architecture_mismatch_is_named(results):
    _check(results, "architecture", "hidden_size: checkpoint 64, model 96")


def test_teacher_source_check_accepts_a_moved_copy_and_rejects_other_content(teacher_ckpt, tmp_path):
    original = checkpoint.describe_source(teacher_ckpt)
    copy = tmp_path / "copy"
    shutil.copytree(teacher_ckpt, copy)
    checkpoint.check_teacher_unchanged(original, checkpoint.describe_source(copy))  # moved: same content
    other = tmp_path / "other"
    shutil.copytree(teacher_ckpt, other)
    meta = json.loads((other / "taidtron.json").read_text())
    meta["content_id"] = "sha256:" + "0" * 64  # what a different set of weights records
    (other / "taidtron.json").write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError, match="teacher changed"):
        checkpoint.check_teacher_unchanged(original, checkpoint.describe_source(other))
    with pytest.raises(checkpoint.CheckpointError, match="teacher changed"):
        checkpoint.check_teacher_unchanged(original, None)


def test_find_latest_ignores_unfinished_saves(tmp_path):
    assert checkpoint.find_latest(tmp_path) is None
    (tmp_path / ".tmp_iter_0000009").mkdir()  # a save that crashed before its rename
    assert checkpoint.find_latest(tmp_path) is None
    (tmp_path / "latest").write_text("iter_0000009")
    with pytest.raises(checkpoint.CheckpointError, match="missing or incomplete"):
        checkpoint.find_latest(tmp_path)


def test_file_digest_is_xxh3_128_of_the_bytes(tmp_path):
    import xxhash

    data = torch.randint(0, 256, (3_000_001,), dtype=torch.uint8).numpy().tobytes()  # crosses read buffers
    (tmp_path / "f").write_bytes(data)
    assert checkpoint.file_digest(tmp_path / "f") == "xxh3_128:" + xxhash.xxh3_128(data).hexdigest()


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
def test_the_ranks_verifying_together_read_every_file_once_in_even_shares(world_size):
    from taidtron.checkpoint.integrity import share_of_files

    sizes = {f"__{r}_{n}.distcp": 1000 * (r + 1) + n for r in range(5) for n in range(3)} | {"common.pt": 7}
    shares = [share_of_files(sizes, rank, world_size) for rank in range(world_size)]
    assert sorted(name for share in shares for name in share) == sorted(sizes)  # each file once
    loads = [sum(sizes[n] for n in share) for share in shares]
    assert max(loads) - min(loads) <= max(sizes.values()), loads
