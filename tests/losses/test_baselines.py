"""Baseline divergences (fkl, rkl, tvd, skew_fkl, skew_rkl, js) against float64 references, and the loss registry
(akl, ctkd and dkd: test_official_baselines.py).

The TP=2/TP=4 runs of every baseline are in test_taid_loss.py (one torchrun launch checks all losses).
"""

from __future__ import annotations

import pytest
import torch

from taidtron.losses import LOSSES, vocab_parallel_fkl_loss, vocab_parallel_taid_loss

from .loss_reference import (
    OPTIONS,
    REFERENCE_OPTION,
    VOCAB,
    divergence_reference,
    make_labels,
    make_logits,
    upstream_grad,
)

SEQ, BATCH = 7, 3
BASELINES = ["fkl", "rkl", "tvd", "skew_fkl", "skew_rkl", "js"]


def _upstream() -> torch.Tensor:
    return upstream_grad(SEQ, BATCH, seed=31)


def _run(name, student, teacher, g, **options):
    s = student.clone().requires_grad_(True)
    loss = LOSSES[name](s, teacher, t=0.4, vocab_size=VOCAB, group=None, chunk_tokens=5, **options)
    (loss * g.to(loss.dtype)).sum().backward()
    return loss, s.grad


@pytest.mark.parametrize("scale", ["unit", "wide", "extreme"])
@pytest.mark.parametrize("name", BASELINES)
def test_fp32_baseline_loss_and_gradient_match_float64_reference_with_padded_junk_vocab(name, scale):
    student, teacher = make_logits((SEQ, BATCH), scale, seed=32)
    g = _upstream()
    loss, grad = _run(name, student, teacher, g, **OPTIONS.get(name, {}))
    ref_loss, ref_grad = divergence_reference(name, student, teacher, VOCAB, REFERENCE_OPTION.get(name), g)
    assert loss.dtype == torch.float32 and loss.shape == (SEQ, BATCH) and grad.dtype == torch.float32
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=5e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=5e-6)
    assert torch.all(grad[..., VOCAB:] == 0)


@pytest.mark.parametrize("name", BASELINES)
def test_bf16_baseline_uses_fp32_statistics_and_returns_bf16_gradient(name):
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=33, dtype=torch.bfloat16)
    g = _upstream()
    loss, grad = _run(name, student, teacher, g, **OPTIONS.get(name, {}))
    ref_loss, ref_grad = divergence_reference(name, student, teacher, VOCAB, REFERENCE_OPTION.get(name), g)
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-4, atol=2e-4)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-2, atol=3e-3)


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_result_does_not_depend_on_chunk_size(name):
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=34)
    g = _upstream()
    results = []
    for chunk in (1, 8, 21, None):
        s = student.clone().requires_grad_(True)
        loss = LOSSES[name](
            s, teacher, t=0.0, vocab_size=VOCAB, group=None, chunk_tokens=chunk, **OPTIONS.get(name, {})
        )
        (loss * g.float()).sum().backward()
        results.append((loss.detach(), s.grad))
    for loss, grad in results[1:]:
        torch.testing.assert_close(loss, results[0][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, results[0][1], rtol=1e-5, atol=1e-7)


def test_forward_kl_gradient_is_q_minus_teacher_and_equals_taid_at_t1_up_to_teacher_entropy():
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=35)
    s1 = student.clone().requires_grad_(True)
    s2 = student.clone().requires_grad_(True)
    fkl = vocab_parallel_fkl_loss(s1, teacher, vocab_size=VOCAB)
    taid = vocab_parallel_taid_loss(s2, teacher, 1.0, vocab_size=VOCAB)
    fkl.sum().backward()
    taid.sum().backward()
    p = torch.softmax(teacher.double()[..., :VOCAB], -1)
    torch.testing.assert_close((taid - fkl).double(), -(p * p.log()).sum(-1), rtol=1e-5, atol=5e-5)
    q = torch.softmax(student.double()[..., :VOCAB], -1)
    torch.testing.assert_close(s1.grad[..., :VOCAB].double(), q - p, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(s1.grad, s2.grad)


def test_divergences_vanish_when_student_equals_teacher():
    student, _ = make_logits((SEQ, BATCH), "wide", seed=36)
    for name in BASELINES:
        s = student.clone().requires_grad_(True)
        loss = LOSSES[name](s, student, t=0.4, vocab_size=VOCAB, group=None, **OPTIONS.get(name, {}))
        loss.sum().backward()
        assert loss.abs().max() < 1e-5, name
        assert s.grad.abs().max() < 1e-5, name  # fp32 rounding of probabilities up to 1


def test_no_grad_baseline_forward_works_for_validation():
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=37)
    for name in BASELINES:
        with torch.no_grad():
            loss = LOSSES[name](
                student.requires_grad_(True), teacher, t=0.4, vocab_size=VOCAB, group=None, **OPTIONS.get(name, {})
            )
        ref_loss, _ = divergence_reference(name, student, teacher, VOCAB, REFERENCE_OPTION.get(name))
        assert loss.grad_fn is None
        torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=5e-5)


# ---- registry -----------------------------------------------------------------------------------------------------


def test_registry_holds_exactly_the_documented_names():
    assert list(LOSSES) == ["taid", *BASELINES, "akl", "ctkd", "dkd"]  # the last three: test_official_baselines.py


def test_every_registry_entry_takes_the_uniform_signature_only_taid_uses_t_and_only_dkd_labels():
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=38)
    labels = [make_labels((SEQ, BATCH), seed) for seed in (1, 2)]
    for name, fn in LOSSES.items():
        options = {"temperature": 2.0} if name == "ctkd" else {}
        results = {
            (t, i): fn(student, teacher, t=t, vocab_size=VOCAB, group=None, labels=labels[i], chunk_tokens=4, **options)
            for t in (0.0, 1.0)
            for i in (0, 1)
        }
        assert results[0.0, 0].shape == (SEQ, BATCH)
        if name == "taid":
            assert not torch.allclose(results[0.0, 0], results[1.0, 0])
            torch.testing.assert_close(
                results[1.0, 0], vocab_parallel_taid_loss(student, teacher, 1.0, vocab_size=VOCAB)
            )
        else:
            torch.testing.assert_close(results[0.0, 0], results[1.0, 0])
        if name == "dkd":
            assert not torch.allclose(results[0.0, 0], results[0.0, 1])
        else:
            torch.testing.assert_close(results[0.0, 0], results[0.0, 1])


def test_registry_rejects_options_a_loss_does_not_take():
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=39)
    with pytest.raises(TypeError):
        LOSSES["rkl"](student, teacher, t=0.4, vocab_size=VOCAB, group=None, skew=0.1)


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("skew_fkl", {"skew": 1.0}, r"skew=1.0 must be in \[0, 1\)"),
        ("skew_rkl", {"skew": -0.1}, r"skew=-0.1 must be in \[0, 1\)"),
        ("js", {"beta": 0.0}, r"beta=0.0 must be in \(0, 1\)"),
        ("js", {"beta": 1.0}, r"beta=1.0 must be in \(0, 1\)"),
    ],
)
def test_invalid_baseline_weights_raise_value_error(name, options, match):
    student, teacher = make_logits((SEQ, BATCH), "unit", seed=40)
    with pytest.raises(ValueError, match=match):
        LOSSES[name](student, teacher, t=0.4, vocab_size=VOCAB, group=None, **options)


def test_skew_zero_reduces_to_plain_kl():
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=41)
    kw = dict(t=0.4, vocab_size=VOCAB, group=None)
    torch.testing.assert_close(
        LOSSES["skew_fkl"](student, teacher, skew=0.0, **kw),
        LOSSES["fkl"](student, teacher, **kw),
        rtol=1e-5,
        atol=5e-5,
    )
    torch.testing.assert_close(
        LOSSES["skew_rkl"](student, teacher, skew=0.0, **kw),
        LOSSES["rkl"](student, teacher, **kw),
        rtol=1e-5,
        atol=5e-5,
    )
