"""The fused vocab-parallel TAID loss against an independent float64 reference (single process), plus its contract.

Multi-rank checks (TP=2, TP=4 under torchrun, collective counts) are at the bottom and run `tp_worker.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from taidtron.losses import vocab_parallel_taid_loss
from tests.support import run_torchrun

from .loss_reference import PADDED_VOCAB, VOCAB, make_logits, taid_reference, upstream_grad

SEQ, BATCH = 7, 3  # 21 tokens: chunks of 5 leave a remainder of 1
WORKER = Path(__file__).with_name("tp_worker.py")


def _upstream(seed: int) -> torch.Tensor:
    return upstream_grad(SEQ, BATCH, seed)


def _run(student, teacher, t, g, **kwargs):
    s = student.clone().requires_grad_(True)
    loss = vocab_parallel_taid_loss(s, teacher, t, **kwargs)
    (loss * g.to(loss.dtype)).sum().backward()
    return loss, s.grad


@pytest.mark.parametrize("t", [0.0, 0.4, 0.93, 1.0])
@pytest.mark.parametrize("scale", ["unit", "wide", "extreme"])
def test_fp32_loss_and_gradient_match_float64_reference_with_padded_junk_vocab(t, scale):
    student, teacher = make_logits((SEQ, BATCH), scale, seed=1)
    g = _upstream(2)
    loss, grad = _run(student, teacher, t, g, vocab_size=VOCAB, chunk_tokens=5)
    ref_loss, ref_grad = taid_reference(student, teacher, t, VOCAB)
    assert loss.dtype == torch.float32 and loss.shape == (SEQ, BATCH)
    assert grad.dtype == torch.float32 and grad.shape == student.shape
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-6, atol=2e-5)
    # the TAID gradient is (q - p_t) times the upstream gradient; padding columns get exactly zero
    torch.testing.assert_close(grad.double(), ref_grad * g.unsqueeze(-1), rtol=1e-4, atol=2e-6)
    assert torch.all(grad[..., VOCAB:] == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("t", [0.0, 0.4, 0.93, 1.0])
def test_half_precision_logits_use_fp32_statistics_and_return_grad_in_logits_dtype(dtype, t):
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=3, dtype=dtype)
    if dtype == torch.float16:  # 3e38 junk is inf in fp16: padding must be ignored whatever it holds
        assert torch.isinf(teacher[..., VOCAB:]).all()
    g = _upstream(4)
    loss, grad = _run(student, teacher, t, g, vocab_size=VOCAB, chunk_tokens=5)
    ref_loss, ref_grad = taid_reference(student, teacher, t, VOCAB)  # from the rounded inputs, in float64
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-4)  # statistics are fp32
    torch.testing.assert_close(grad.double(), ref_grad * g.unsqueeze(-1), rtol=1e-2, atol=2e-3)  # one rounding
    assert torch.all(grad[..., VOCAB:] == 0)


@pytest.mark.parametrize("chunk_tokens", [1, 4, 20, 21, 64, None])
def test_result_does_not_depend_on_chunk_size(chunk_tokens):
    student, teacher = make_logits((SEQ, BATCH), "extreme", seed=5)
    g = _upstream(6)
    loss, grad = _run(student, teacher, 0.4, g, vocab_size=VOCAB, chunk_tokens=chunk_tokens)
    loss_1, grad_1 = _run(student, teacher, 0.4, g, vocab_size=VOCAB, chunk_tokens=7)
    torch.testing.assert_close(loss, loss_1, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, grad_1, rtol=1e-6, atol=1e-7)


def test_unpadded_vocab_default_uses_every_column():
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=7, vocab=PADDED_VOCAB)
    loss = vocab_parallel_taid_loss(student, teacher, 0.4)
    ref_loss, _ = taid_reference(student, teacher, 0.4, PADDED_VOCAB)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-6, atol=2e-5)


def test_mean_reduction_gradient_matches_reference_and_teacher_gets_none():
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=8)
    s = student.clone().requires_grad_(True)
    te = teacher.clone().requires_grad_(True)  # a teacher that (wrongly) requires grad still gets none
    vocab_parallel_taid_loss(s, te, 0.4, vocab_size=VOCAB).mean().backward()
    _, ref_grad = taid_reference(student, teacher, 0.4, VOCAB)
    torch.testing.assert_close(s.grad.double(), ref_grad / (SEQ * BATCH), rtol=1e-4, atol=1e-7)
    assert te.grad is None


def test_backward_saves_only_inputs_and_per_token_statistics():
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=9)
    s = student.clone().requires_grad_(True)
    loss = vocab_parallel_taid_loss(s, teacher, 0.4, vocab_size=VOCAB, chunk_tokens=5)
    saved = loss.grad_fn.next_functions[0][0].saved_tensors  # view -> the autograd Function
    tokens = SEQ * BATCH
    big = [x for x in saved if x.numel() >= tokens * VOCAB]
    assert len(big) == 2  # the student and teacher logits themselves, no [tokens, V] fp32 temporaries
    assert {x.data_ptr() for x in big} == {s.data_ptr(), teacher.data_ptr()}
    small = [x for x in saved if x.numel() < tokens * VOCAB]
    assert [tuple(x.shape) for x in small] == [(tokens, 2)]


def test_no_grad_forward_works_for_validation():
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=10)
    with torch.no_grad():
        loss = vocab_parallel_taid_loss(student.requires_grad_(True), teacher, 0.4, vocab_size=VOCAB)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss.double(), taid_reference(student, teacher, 0.4, VOCAB)[0], rtol=2e-6, atol=2e-5)


def test_t_zero_gives_student_entropy_and_zero_gradient():
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=11)
    loss, grad = _run(student, teacher, 0.0, _upstream(12), vocab_size=VOCAB)
    q = torch.softmax(student.double()[..., :VOCAB], -1)
    torch.testing.assert_close(loss.double(), -(q * q.log()).sum(-1), rtol=1e-5, atol=1e-5)
    assert grad.abs().max() < 1e-6


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(teacher_shape=(SEQ, BATCH, PADDED_VOCAB - 8)), "same shape"),
        (dict(teacher_dtype=torch.bfloat16), "same dtype"),
        (dict(dtype=torch.float64), "not supported"),
        (dict(t=-0.1), r"outside \[0, 1\]"),
        (dict(t=1.5), r"outside \[0, 1\]"),
        (dict(t=float("nan")), r"outside \[0, 1\]"),
        (dict(vocab_size=PADDED_VOCAB + 1), "vocab_size"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(chunk_tokens=0), "chunk_tokens"),
    ],
)
def test_invalid_arguments_raise_value_error_with_the_fix(kwargs, match):
    dtype = kwargs.get("dtype", torch.float32)
    student = torch.zeros(SEQ, BATCH, PADDED_VOCAB, dtype=dtype)
    teacher = torch.zeros(kwargs.get("teacher_shape", student.shape), dtype=kwargs.get("teacher_dtype", dtype))
    call = {k: v for k, v in kwargs.items() if k in ("vocab_size", "chunk_tokens")}
    with pytest.raises(ValueError, match=match):
        vocab_parallel_taid_loss(student, teacher, kwargs.get("t", 0.4), **call)


# ---- multi-rank (torchrun, gloo) ----------------------------------------------------------------------------------


@pytest.mark.multiprocess
def test_tp2_matches_unsharded_reference_with_uneven_vocab():
    assert [r["taid"] for r in run_torchrun(WORKER, 2, "taid")] == ["ok"] * 2


@pytest.mark.multiprocess
def test_tp4_matches_unsharded_reference_with_uneven_vocab_and_an_all_padding_rank():
    for r in run_torchrun(WORKER, 4, "taid"):
        assert (r["taid"], r["all_padding_rank"], r["tp2_subgroups"]) == ("ok", "ok", "ok")


@pytest.mark.multiprocess
def test_tp_forward_uses_one_max_and_one_sum_all_reduce_and_backward_none():
    results = run_torchrun(WORKER, 2, "count")
    assert len(results) == 2
    for r in results:
        assert r["taid_collectives"] == {"forward": ["MAX (21, 2)", "SUM (21, 3)"], "backward": []}
        assert r["fkl_collectives"] == {"forward": ["MAX (21, 2)", "SUM (21, 4)"], "backward": []}
        assert r["rkl_collectives"] == {"forward": 15, "backward": 15}  # baselines: 3 per chunk each way
