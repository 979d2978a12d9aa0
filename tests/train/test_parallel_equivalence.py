"""One layout-independent training run: every tp/pp/dp mix that fits in 4 ranks gives the loss, t and updated student
weights of tp = pp = dp = 1 (real gloo collectives and pipeline p2p, megatron DDP + distributed optimizer).

Teacher and student start from the same checkpoints in every layout (random init depends on the layout), written
once at tp = pp = 1. The updated students are compared as full tensors read back from their dist checkpoints with
torch's own DCP reader, independent of taidtron and megatron.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tests.support import gpu_env, require_gpu, run_torchrun

WORKER = Path(__file__).with_name("step_worker.py")
LAYOUTS = {
    "tp2_pp2": (4, ["parallel.tp=2", "parallel.pp=2"]),
    "tp2_dp2_sequence_parallel": (4, ["parallel.tp=2", "parallel.sequence_parallel=true"]),
    "pp2_dp2": (4, ["parallel.pp=2"]),
    "dp4_no_distributed_optimizer": (4, ["parallel.distributed_optimizer=false"]),
    "pp4_micro_batch_1": (4, ["parallel.pp=4", "parallel.micro_batch_size=1"]),
}


def _full_weights(directory: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    from taidtron.checkpoint import resolve_iteration_dir

    out = tmp_path / f"{directory.parent.name}.pt"
    dcp_to_torch_save(resolve_iteration_dir(directory), out)
    state = torch.load(out, weights_only=False)
    return {k: v for k, v in state.items() if torch.is_tensor(v) and not k.endswith("_extra_state")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("equivalence")
    student_init, teacher_init = root / "student_init", root / "teacher_init"
    run_torchrun(WORKER, 1, str(root), "init", str(student_init), str(teacher_init))
    ref_dir = root / "tp1_pp1_dp1"
    ref_dir.mkdir()
    (ref,) = run_torchrun(WORKER, 1, str(ref_dir), "train", str(student_init), str(teacher_init))
    return root, ref, ref_dir


@pytest.fixture(scope="module")
def layout_results(reference) -> dict[str, list[dict]]:
    """Every layout, one after another in one torchrun of 4 ranks (megatron's groups rebuilt for each): {layout:
    each rank's results}. One start-up for all: starting 4 ranks costs more than the steps they run."""
    root, _, _ = reference
    (nproc,) = {nproc for nproc, _ in LAYOUTS.values()}
    layouts = json.dumps({name: overrides for name, (_, overrides) in LAYOUTS.items()})
    ranks = run_torchrun(
        WORKER,
        nproc,
        str(root),
        "layouts",
        str(root / "student_init"),
        str(root / "teacher_init"),
        layouts,
        timeout=900,
    )
    return {name: [rank[name] for rank in ranks] for name in LAYOUTS}


@pytest.mark.multiprocess
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process_loss_t_and_updated_student(layout, reference, layout_results, tmp_path):
    root, ref, ref_dir = reference
    nproc, _ = LAYOUTS[layout]
    out = root / layout
    results = layout_results[layout]
    assert all(r["world_size"] == nproc for r in results)
    assert all(r["taid_t"] == results[0]["taid_t"] for r in results), "t differs across ranks"
    got = results[0]
    torch.testing.assert_close(torch.tensor(got["loss"]), torch.tensor(ref["loss"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.tensor(got["grad_norm"]), torch.tensor(ref["grad_norm"]), rtol=1e-4, atol=1e-7)
    assert got["taid_t"] == pytest.approx(ref["taid_t"], rel=1e-9, abs=1e-12)

    initial = _full_weights(root / "student_init", tmp_path)
    expected = _full_weights(ref_dir / "student", tmp_path)
    actual = _full_weights(out / "student", tmp_path)
    assert actual.keys() == expected.keys()
    moved = max((expected[k] - initial[k]).abs().max().item() for k in expected)
    assert moved > 1e-3, "the reference run did not move the weights; the comparison would be vacuous"
    for key in expected:
        torch.testing.assert_close(
            actual[key], expected[key], rtol=1e-4, atol=2e-5, msg=lambda m, key=key: f"{key}: {m}"
        )


@pytest.mark.multiprocess
def test_t_starts_at_t_start_and_rises_monotonically_above_the_linear_floor(reference):
    _, ref, _ = reference
    t = ref["taid_t"]
    assert t[0] == 0.4  # the first update only records the loss
    linear_floor = [0.4 + 0.6 * steps_before / 20 for steps_before in (1, 2)]  # updates after steps 2 and 3
    assert all(b > a for a, b in zip(t, t[1:]))
    assert all(value >= floor - 1e-12 for value, floor in zip(t[1:], linear_floor))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gpu_three_steps_match_the_cpu_run(precision, reference, tmp_path):
    """The single-process run on a GPU against the same run on CPU (fp32, the `reference` fixture): the same loss,
    gradient norm, t and updated student. fp32 with TF32 off (NVIDIA_TF32_OVERRIDE=0) agrees to fp32 rounding
    (kernels and fusions differ, the math does not); bf16 to bf16 rounding of the weights and activations."""
    require_gpu()
    root, ref, ref_dir = reference
    out = root / f"gpu_{precision}"
    out.mkdir()
    (got,) = run_torchrun(
        WORKER,
        1,
        str(out),
        "train",
        str(root / "student_init"),
        str(root / "teacher_init"),
        f"precision={precision}",
        env=gpu_env(NVIDIA_TF32_OVERRIDE="0"),
    )
    loose = precision == "bf16"
    loss_tol = {"rtol": 2e-2, "atol": 1e-3} if loose else {"rtol": 1e-5, "atol": 1e-6}
    norm_tol = {"rtol": 5e-2, "atol": 1e-4} if loose else {"rtol": 1e-4, "atol": 1e-7}
    print(
        f"GPU {precision} vs CPU fp32: loss {got['loss']} vs {ref['loss']}, grad norm {got['grad_norm']} vs "
        f"{ref['grad_norm']}, t {got['taid_t']} vs {ref['taid_t']}"
    )
    torch.testing.assert_close(torch.tensor(got["loss"]), torch.tensor(ref["loss"]), **loss_tol)
    torch.testing.assert_close(torch.tensor(got["grad_norm"]), torch.tensor(ref["grad_norm"]), **norm_tol)
    assert got["taid_t"] == pytest.approx(ref["taid_t"], abs=1e-3 if loose else 1e-9)

    initial = _full_weights(root / "student_init", tmp_path)
    expected = _full_weights(ref_dir / "student", tmp_path)
    actual = _full_weights(out / "student", tmp_path)
    for key in expected:
        want, have = expected[key] - initial[key], actual[key].float() - initial[key]
        if loose:  # bf16 weights: compare the updates' directions, each tensor as a whole
            cosine = torch.nn.functional.cosine_similarity(have.flatten(), want.flatten(), dim=0)
            assert cosine > 0.98, f"{key}: update direction cosine {cosine:.4f}"
        else:
            torch.testing.assert_close(have, want, rtol=1e-4, atol=2e-5, msg=lambda m, key=key: f"{key}: {m}")
