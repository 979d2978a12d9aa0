"""The Triton kernels of the fused TAID / forward-KL loss against the float64 reference, and the `impl` choice.

Tests marked `triton` run the kernels: on CPU under Triton's interpreter (`make test-triton` sets TRITON_INTERPRET=1
and installs the `triton` extra), or compiled on a CUDA device when TRITON_INTERPRET is unset. `make test`
deselects them (-m "not triton"); run directly without Triton or without either mode, they fail saying what to do.
The TP=2/4 runs always use the interpreter on CPU (gloo). The unmarked tests at the bottom check the dispatch
without Triton. Shapes are small: the interpreter runs each program in numpy, one after the other.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from taidtron.losses import LOSSES, vocab_parallel_fkl_loss, vocab_parallel_taid_loss
from taidtron.losses import vocab_parallel as vp
from tests.support import REPO_ROOT, run_torchrun

from .loss_reference import PADDED_VOCAB, VOCAB, divergence_reference, make_logits, taid_reference, upstream_grad

SEQ, BATCH = 7, 3  # 21 tokens: with 8 rows per program the last program holds 5 real rows
WORKER = Path(__file__).with_name("tp_worker.py")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"


@pytest.fixture
def kernels(monkeypatch):
    """The kernel module, tiles of 128 columns x 8 rows (several tiles per row, a partial last tile and block)."""
    module = vp._triton_kernels()
    if isinstance(module, ImportError):
        pytest.fail(f"Triton does not import ({module}): `make test-triton` installs the extra and runs these tests")
    if DEVICE == "cpu" and not INTERPRET:
        pytest.fail("no CUDA device and TRITON_INTERPRET is not 1: run `make test-triton` (the interpreter on CPU)")
    monkeypatch.setattr(module, "MAX_BLOCK_V", 128)
    monkeypatch.setattr(module, "TILE_ELEMENTS", 1024)
    return module


def _run(fn, student, teacher, g, **kwargs):
    s = student.to(DEVICE).clone().requires_grad_(True)
    loss = fn(s, teacher.to(DEVICE), **kwargs)
    (loss * g.to(device=DEVICE, dtype=loss.dtype)).sum().backward()
    return loss.detach().cpu(), s.grad.cpu()


def _taid(student, teacher, t, g, **kwargs):
    return _run(vocab_parallel_taid_loss, student, teacher, g, t=t, vocab_size=VOCAB, impl="triton", **kwargs)


# ---- the kernels against the float64 reference ---------------------------------------------------------------------


@pytest.mark.triton
@pytest.mark.parametrize("t", [0.0, 0.4, 0.93, 1.0])
@pytest.mark.parametrize("scale", ["unit", "wide", "extreme"])
def test_fp32_loss_and_gradient_match_float64_reference(kernels, t, scale):
    student, teacher = make_logits((SEQ, BATCH), scale, seed=1)
    g = upstream_grad(SEQ, BATCH, seed=2)  # positive, zero and negative entries: no sign split in the kernel
    loss, grad = _taid(student, teacher, t, g)
    ref_loss, ref_grad = taid_reference(student, teacher, t, VOCAB)
    assert loss.dtype == torch.float32 and loss.shape == (SEQ, BATCH)
    assert grad.dtype == torch.float32 and grad.shape == student.shape
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-6, atol=2e-5)
    torch.testing.assert_close(grad.double(), ref_grad * g.unsqueeze(-1), rtol=1e-4, atol=2e-6)
    assert torch.all(grad[..., VOCAB:] == 0)  # junk padding never read, its gradient exactly zero


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t", [0.0, 0.4, 0.93, 1.0])
def test_half_precision_logits_accumulate_in_fp32_and_get_their_dtype_back(kernels, dtype, t):
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=3, dtype=dtype)
    if dtype == torch.float16:  # 3e38 junk is inf in fp16: padding must be ignored whatever it holds
        assert torch.isinf(teacher[..., VOCAB:]).all()
    g = upstream_grad(SEQ, BATCH, seed=4)
    loss, grad = _taid(student, teacher, t, g)
    ref_loss, ref_grad = taid_reference(student, teacher, t, VOCAB)  # from the rounded inputs, in float64
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad.double(), ref_grad * g.unsqueeze(-1), rtol=1e-2, atol=2e-3)
    assert torch.all(grad[..., VOCAB:] == 0)


@pytest.mark.triton
@pytest.mark.parametrize("scale", ["unit", "wide", "extreme"])
def test_forward_kl_kernel_matches_float64_reference(kernels, scale):
    student, teacher = make_logits((SEQ, BATCH), scale, seed=5)
    g = upstream_grad(SEQ, BATCH, seed=6)
    loss, grad = _run(vocab_parallel_fkl_loss, student, teacher, g, vocab_size=VOCAB, impl="triton")
    ref_loss, ref_grad = divergence_reference("fkl", student, teacher, VOCAB, grad_loss=g)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=5e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=5e-6)
    assert torch.all(grad[..., VOCAB:] == 0)


@pytest.mark.triton
@pytest.mark.parametrize("tiles", [(16, 256), (256, 256), (4096, 4096)])
def test_result_does_not_depend_on_the_tiling(kernels, monkeypatch, tiles):
    """(MAX_BLOCK_V, TILE_ELEMENTS): 63 tiles of 16 columns x 16 rows; 4 x 256 columns, one row per program; and
    the default (one 1024-column tile x 4 rows), against the fixture's 8 tiles of 128 columns x 8 rows."""
    student, teacher = make_logits((SEQ, BATCH), "extreme", seed=7)
    g = upstream_grad(SEQ, BATCH, seed=8)
    expected = _taid(student, teacher, 0.4, g)
    monkeypatch.setattr(kernels, "MAX_BLOCK_V", tiles[0])
    monkeypatch.setattr(kernels, "TILE_ELEMENTS", tiles[1])
    for got, want in zip(_taid(student, teacher, 0.4, g), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.triton
@pytest.mark.parametrize("with_entropy", [False, True])
def test_kernel_statistics_equal_the_torch_chunk_statistics(kernels, with_entropy):
    """The kernel boundary: `taid_stats` gives `_math.taid_chunk_stats`'s statistics, same units and layout, relative
    to a reference at most RESCALE_THRESHOLD (base 2) below the maxima; re-expressed to the maxima they agree."""
    student, teacher = make_logits((SEQ * BATCH,), "extreme", seed=9, dtype=torch.bfloat16)
    refs, sums = kernels.taid_stats(student.to(DEVICE), teacher.to(DEVICE), 0.93, VOCAB, with_entropy)
    work = vp._math.new_workspace(with_entropy, SEQ * BATCH, VOCAB, "cpu")
    maxes, want = vp._math.taid_chunk_stats(student[:, :VOCAB], teacher[:, :VOCAB], 0.93, with_entropy, work)
    refs, sums = refs.cpu(), sums.cpu()
    assert refs.dtype == sums.dtype == torch.float32 and sums.shape == (SEQ * BATCH, 4 if with_entropy else 3)
    assert torch.all(refs <= maxes + 1e-5) and torch.all(refs >= maxes - kernels.RESCALE_THRESHOLD)
    got = vp._math.rescale_partial_stats(refs, maxes, sums)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def _ramp(dtype=torch.float32):
    """Logits rising along the vocabulary (-40 -> 40 plus noise): nearly every tile raises the maxima by more than
    the rescale threshold, so the running sums are re-expressed many times."""
    gen = torch.Generator().manual_seed(15)
    ramp = torch.linspace(-40, 40, PADDED_VOCAB, dtype=torch.float64)
    s = ramp + torch.randn(SEQ, BATCH, PADDED_VOCAB, generator=gen, dtype=torch.float64)
    t = ramp.flip(0) * 0.5 + ramp * 0.7 + torch.randn(SEQ, BATCH, PADDED_VOCAB, generator=gen, dtype=torch.float64)
    s[..., VOCAB:], t[..., VOCAB:] = 1.0e4, 3.0e38
    return s.to(dtype), t.to(dtype)


@pytest.mark.triton
@pytest.mark.parametrize("threshold", [0.0, 8.0])
@pytest.mark.parametrize("t", [0.4, 1.0])
def test_rising_logits_rescale_the_running_sums_exactly(kernels, monkeypatch, threshold, t):
    monkeypatch.setattr(kernels, "RESCALE_THRESHOLD", threshold)  # 0: rescale on every increase of the maxima
    monkeypatch.setattr(kernels, "MAX_BLOCK_V", 32)  # 32 tiles per row, each raising the maxima by ~2.5 nats
    student, teacher = _ramp()
    g = upstream_grad(SEQ, BATCH, seed=16)
    loss, grad = _taid(student, teacher, t, g)
    ref_loss, ref_grad = taid_reference(student, teacher, t, VOCAB)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-6, atol=2e-5)
    torch.testing.assert_close(grad.double(), ref_grad * g.unsqueeze(-1), rtol=1e-4, atol=2e-6)
    loss, grad = _run(vocab_parallel_fkl_loss, student, teacher, g, vocab_size=VOCAB, impl="triton")
    ref_loss, ref_grad = divergence_reference("fkl", student, teacher, VOCAB, grad_loss=g)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=5e-5)


@pytest.mark.triton
def test_triton_and_torch_paths_agree_and_strided_rows_are_read_in_place(kernels):
    wide_s, wide_t = make_logits((SEQ, BATCH), "wide", seed=10, padded=PADDED_VOCAB + 40)
    student, teacher = wide_s[..., :PADDED_VOCAB], wide_t[..., :PADDED_VOCAB]  # rows 1048 apart, unit columns
    assert not student.is_contiguous() and student.stride(-1) == 1
    g = upstream_grad(SEQ, BATCH, seed=11)
    for fn, kw in ((vocab_parallel_taid_loss, {"t": 0.4}), (vocab_parallel_fkl_loss, {})):
        got = _run(fn, student, teacher, g, vocab_size=VOCAB, impl="triton", **kw)
        want = _run(fn, student, teacher, g, vocab_size=VOCAB, impl="torch", **kw)
        torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-5)
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-7)


@pytest.mark.triton
def test_registry_passes_impl_to_the_fused_losses(kernels):
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=12)
    for name in ("taid", "fkl"):
        loss = LOSSES[name](student.to(DEVICE), teacher.to(DEVICE), t=0.4, vocab_size=VOCAB, group=None, impl="triton")
        torch.testing.assert_close(
            loss.cpu(),
            LOSSES[name](student, teacher, t=0.4, vocab_size=VOCAB, group=None, impl="torch"),
            rtol=1e-6,
            atol=1e-5,
        )


@pytest.mark.triton
def test_backward_saves_only_inputs_and_per_token_statistics(kernels):
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=13)
    s = student.to(DEVICE).requires_grad_(True)
    te = teacher.to(DEVICE)
    loss = vocab_parallel_taid_loss(s, te, 0.4, vocab_size=VOCAB, impl="triton")
    saved = loss.grad_fn.next_functions[0][0].saved_tensors
    assert sorted(tuple(x.shape) for x in saved) == [
        (SEQ * BATCH, 2),
        (SEQ * BATCH, PADDED_VOCAB),
        (SEQ * BATCH, PADDED_VOCAB),
    ]
    assert {x.data_ptr() for x in saved if x.dim() == 2 and x.shape[1] == PADDED_VOCAB} == {s.data_ptr(), te.data_ptr()}


@pytest.mark.triton
def test_no_grad_forward_and_zero_tokens(kernels):
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=14)
    with torch.no_grad():
        loss = vocab_parallel_taid_loss(student.to(DEVICE), teacher.to(DEVICE), 0.4, vocab_size=VOCAB, impl="triton")
    torch.testing.assert_close(
        loss.cpu().double(), taid_reference(student, teacher, 0.4, VOCAB)[0], rtol=2e-6, atol=2e-5
    )
    empty = torch.zeros(0, BATCH, PADDED_VOCAB, device=DEVICE, requires_grad=True)
    loss = vocab_parallel_taid_loss(empty, empty.detach(), 0.4, vocab_size=VOCAB, impl="triton")
    loss.sum().backward()
    assert loss.shape == (0, BATCH) and empty.grad.shape == empty.shape


# ---- tensor parallelism under torchrun (always the interpreter on CPU, gloo) --------------------------------------


def _tp(nproc: int, mode: str) -> list[dict]:
    if isinstance(vp._triton_kernels(), ImportError):
        pytest.fail("Triton does not import: `make test-triton` installs the extra and runs these tests")
    return run_torchrun(WORKER, nproc, mode, "triton", env={"TRITON_INTERPRET": "1"})


@pytest.mark.triton
@pytest.mark.multiprocess
def test_tp2_kernel_matches_unsharded_reference_with_uneven_vocab():
    assert [r["taid"] for r in _tp(2, "taid")] == ["ok"] * 2


@pytest.mark.triton
@pytest.mark.multiprocess
def test_tp4_kernel_matches_reference_with_an_all_padding_rank_and_tp2_subgroups():
    for r in _tp(4, "taid"):
        assert (r["taid"], r["all_padding_rank"], r["tp2_subgroups"]) == ("ok", "ok", "ok")


@pytest.mark.triton
@pytest.mark.multiprocess
def test_tp_kernel_forward_uses_one_max_and_one_sum_all_reduce_and_backward_none():
    results = _tp(2, "count")
    assert len(results) == 2
    for r in results:
        assert r["taid_collectives"] == {"forward": ["MAX (21, 2)", "SUM (21, 3)"], "backward": []}
        assert r["fkl_collectives"] == {"forward": ["MAX (21, 2)", "SUM (21, 4)"], "backward": []}


# ---- the benchmark's Triton row --------------------------------------------------------------------------------------


@pytest.mark.triton
def test_bench_loss_runs_the_triton_variant(kernels, tmp_path):
    """Only the code path: timing under the interpreter means nothing."""
    out = tmp_path / "bench.json"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    cmd = [
        sys.executable,
        str(REPO_ROOT / "tools" / "bench_loss.py"),
        "--tokens",
        "8",
        "--vocab",
        "300",
        "--device",
        DEVICE,
        "--repeats",
        "1",
        "--warmup",
        "1",
        "--variants",
        "chunked,triton",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import json

    results = {r["variant"]: r for r in json.loads(out.read_text())["results"]}
    assert set(results) == {"chunked", "triton"}
    assert abs(results["triton"]["loss"] - results["chunked"]["loss"]) < 1e-5


# ---- the compiled kernels (no GPU needed) ---------------------------------------------------------------------------


@pytest.mark.triton
def test_kernels_compile_for_h100_h200_without_spills_and_with_vector_loads():
    """The interpreter cannot tell whether the kernels compile: build them for sm_90a with the wheel's ptxas.

    Bounds (launch configuration of triton_taid.py): no spills; the forward <= 104 registers (6 programs of 4 warps
    per SM need <= 80, fkl's entropy sum may cost a little occupancy), the backward <= 48; the full tiles use
    16-byte loads of both logits and 16-byte stores of the gradient.
    """
    if isinstance(vp._triton_kernels(), ImportError):
        pytest.fail("Triton does not import: `make test-triton` installs the extra and runs these tests")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.losses.triton_compile_check", "sm_90a"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    import json

    reports = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(reports) == 9  # 3 dtypes x (taid forward, fkl forward, backward)
    for r in reports:
        assert r["spill_bytes"] == 0, r
        per_tensor = 2 if r["dtype"] == "fp32" else 1  # 8 values per thread: 32 or 16 bytes
        if r["kernel"] == "_taid_stats_kernel":
            assert r["registers"] <= (80 if not r["WITH_ENTROPY"] else 104), r
            assert r["vector_loads"] >= 2 * per_tensor, r
        else:
            assert r["registers"] <= 48, r
            assert r["vector_loads"] >= 2 * per_tensor and r["vector_stores"] >= per_tensor, r


# ---- at full size on a GPU (the GPU check; `gpu` tests are not run in CI) -----------------------------------------


@pytest.mark.triton
@pytest.mark.gpu
@pytest.mark.parametrize("tokens, vocab", [(8192, 151936), (4096, 76032)])  # Qwen2 vocab; 72B last stage at TP=2
def test_gpu_kernel_matches_torch_path_and_float64_on_sampled_rows(tokens, vocab):
    if not torch.cuda.is_available() or INTERPRET:
        pytest.fail("needs a CUDA device and TRITON_INTERPRET unset (run by the GPU check, not by make test)")
    gen = torch.Generator(device="cuda").manual_seed(0)
    student = (torch.randn(tokens, vocab, device="cuda", generator=gen) * 4).to(torch.bfloat16)
    teacher = (torch.randn(tokens, vocab, device="cuda", generator=gen) * 4).to(torch.bfloat16)
    g = torch.rand(tokens, device="cuda", generator=gen) - 0.2  # some negative
    results = {}
    for impl in ("triton", "torch"):
        s = student.clone().requires_grad_(True)
        loss = vocab_parallel_taid_loss(s, teacher, 0.4, vocab_size=vocab - 7, impl=impl)
        (loss * g).sum().backward()
        results[impl] = (loss.detach(), s.grad)
        del s
    torch.testing.assert_close(results["triton"][0], results["torch"][0], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(results["triton"][1], results["torch"][1], rtol=1e-2, atol=2e-4)
    rows = torch.randperm(tokens, generator=torch.Generator().manual_seed(1))[:16].cuda()
    ref_loss, ref_grad = taid_reference(student[rows].cpu(), teacher[rows].cpu(), 0.4, vocab - 7)
    torch.testing.assert_close(results["triton"][0][rows].cpu().double(), ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(
        results["triton"][1][rows].cpu().double(), ref_grad * g[rows].cpu().double()[:, None], rtol=1e-2, atol=2e-4
    )
    assert torch.all(results["triton"][1][:, vocab - 7 :] == 0)


# ---- the impl choice (no Triton needed) ----------------------------------------------------------------------------


def test_unknown_impl_raises_value_error_listing_the_choices():
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=20)
    with pytest.raises(ValueError, match="impl='cuda' is unknown; choose one of auto, triton, torch"):
        vocab_parallel_taid_loss(student, teacher, 0.4, impl="cuda")


def test_auto_on_cpu_tensors_is_the_torch_path():
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=21)
    g = upstream_grad(SEQ, BATCH, seed=22)
    auto = _run_cpu(student, teacher, g, impl="auto")
    torch_path = _run_cpu(student, teacher, g, impl="torch")
    assert torch.equal(auto[0], torch_path[0]) and torch.equal(auto[1], torch_path[1])
    assert vp._resolve_impl("auto", torch.device("cpu")) == "torch"


def _run_cpu(student, teacher, g, **kwargs):
    s = student.clone().requires_grad_(True)
    loss = vocab_parallel_taid_loss(s, teacher, 0.4, vocab_size=VOCAB, **kwargs)
    (loss * g.float()).sum().backward()
    return loss.detach(), s.grad


def test_triton_on_cpu_without_the_interpreter_names_the_fix(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(vp, "_triton_kernels", lambda: object())  # as if Triton imported
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=23)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1.*impl='torch'"):
        vocab_parallel_taid_loss(student, teacher, 0.4, impl="triton")


def test_missing_triton_is_an_error_for_triton_and_a_warning_for_auto_on_cuda(monkeypatch):
    monkeypatch.setattr(vp, "_triton_kernels", lambda: ImportError("No module named 'triton'"))
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=24)
    with pytest.raises(ValueError, match=r"impl='triton' needs Triton.*taidtron\[triton\].*impl='torch'"):
        vocab_parallel_fkl_loss(student, teacher, impl="triton")
    with pytest.warns(RuntimeWarning, match="uses its torch path"):
        assert vp._resolve_impl("auto", torch.device("cuda")) == "torch"


def test_baselines_do_not_take_impl():
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=25)
    with pytest.raises(TypeError):
        LOSSES["rkl"](student, teacher, t=0.4, vocab_size=VOCAB, group=None, impl="triton")
