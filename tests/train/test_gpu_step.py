"""One optimizer step on the GPU, watched for what only a GPU shows: host-device syncs inside the micro-batch loop,
and the skip of a step whose gradient holds an inf (on CPU too, where the same worker runs in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import gpu_env, require_gpu, run_torchrun

WORKER = Path(__file__).with_name("gpu_step_worker.py")


@pytest.mark.gpu
def test_gpu_step_makes_no_host_sync_per_micro_batch():
    """torch.cuda.set_sync_debug_mode counts the syncs of one warm step at 2 and at 4 micro-batches: no location may
    sync more often with more micro-batches (a blocking copy or an .item() in the loop would)."""
    require_gpu()
    (result,) = run_torchrun(WORKER, 1, "host_syncs", env=gpu_env())
    found = result["host_syncs"]
    print(f"syncs per step by location: {found['syncs']}")
    assert found["per_micro_batch"] == {}, found


def _check_inf_gradient(result: dict, device: str) -> None:
    found = result["inf_gradient"]
    print(found)
    assert found["device"].startswith(device)
    assert found["bad_step"]["skipped"] is True, found
    assert found["changed_by_bad_step"] == [], "a skipped step changed weights"
    assert found["skipped_steps_after_bad"] == 1
    assert found["clean_step"]["skipped"] is False and found["moved_by_clean_step"] > 0, found
    assert found["finite_after"] is True


def test_an_injected_inf_gradient_skips_the_step_and_the_next_one_trains():
    _check_inf_gradient(run_torchrun(WORKER, 1, "inf_gradient")[0], "cpu")


@pytest.mark.gpu
def test_gpu_injected_inf_gradient_skips_the_step_and_the_next_one_trains():
    """The same in bf16 on the GPU: megatron's found-inf check runs on the device there."""
    require_gpu()
    _check_inf_gradient(run_torchrun(WORKER, 1, "inf_gradient", env=gpu_env())[0], "cuda")
