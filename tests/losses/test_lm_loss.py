"""The vocab-parallel next-token loss (`vocab_parallel_lm_loss`) against an unsharded float64 reference, at TP=1
here and at TP=2 / TP=4 under torchrun (`tp_worker.py lm`), with its collectives counted."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from taidtron.losses import vocab_parallel_lm_loss
from tests.support import run_torchrun

from .loss_reference import PADDED_VOCAB, VOCAB, lm_reference, make_labels, make_logits, upstream_grad

SEQ, BATCH = 7, 3
WORKER = Path(__file__).with_name("tp_worker.py")


def _run(logits, labels, g, **kwargs):
    x = logits.clone().requires_grad_(True)
    loss = vocab_parallel_lm_loss(x, labels, **kwargs)
    (loss * g.to(loss.dtype)).sum().backward()
    return loss, x.grad


@pytest.mark.parametrize("scale", ["unit", "wide", "extreme"])
@pytest.mark.parametrize("chunk_tokens", [1, 5, None])
def test_fp32_loss_and_gradient_match_float64_reference_and_ignore_padded_junk(scale, chunk_tokens):
    logits, _ = make_logits((SEQ, BATCH), scale, seed=41)  # padding columns hold 1e4
    labels, g = make_labels((SEQ, BATCH), seed=42), upstream_grad(SEQ, BATCH, seed=43)  # g has 0 and < 0 entries
    loss, grad = _run(logits, labels, g, vocab_size=VOCAB, chunk_tokens=chunk_tokens)
    ref_loss, ref_grad = lm_reference(logits, labels, VOCAB, g)
    assert loss.dtype == torch.float32 and loss.shape == (SEQ, BATCH)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-6, atol=2e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=2e-6)
    assert torch.all(grad[..., VOCAB:] == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_use_fp32_statistics_and_return_grad_in_logits_dtype(dtype):
    logits, _ = make_logits((SEQ, BATCH), "wide", seed=44, dtype=dtype)
    labels, g = make_labels((SEQ, BATCH), seed=45), upstream_grad(SEQ, BATCH, seed=46)
    loss, grad = _run(logits, labels, g, vocab_size=VOCAB, chunk_tokens=5)
    ref_loss, ref_grad = lm_reference(logits, labels, VOCAB, g)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-2, atol=2e-3)


def test_logits_are_not_modified_in_place():
    logits, _ = make_logits((SEQ, BATCH), "wide", seed=47)
    before = logits.clone()
    _run(logits, make_labels((SEQ, BATCH), seed=48), upstream_grad(SEQ, BATCH, seed=49), vocab_size=VOCAB)
    assert torch.equal(logits, before)


def test_invalid_arguments_raise_value_error_with_the_fix():
    logits = torch.zeros(SEQ, BATCH, PADDED_VOCAB)
    with pytest.raises(ValueError, match="labels"):
        vocab_parallel_lm_loss(logits, torch.zeros(SEQ, dtype=torch.long), vocab_size=VOCAB)
    with pytest.raises(ValueError, match="vocab_size"):
        vocab_parallel_lm_loss(logits, torch.zeros(SEQ, BATCH, dtype=torch.long), vocab_size=PADDED_VOCAB + 1)
    with pytest.raises(ValueError, match="not supported"):
        vocab_parallel_lm_loss(logits.double(), torch.zeros(SEQ, BATCH, dtype=torch.long))


@pytest.mark.multiprocess
@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_matches_unsharded_float64_reference(tp):
    assert [r["lm"] for r in run_torchrun(WORKER, tp, "lm")] == ["ok"] * tp


@pytest.mark.multiprocess
def test_forward_uses_one_max_and_one_sum_all_reduce_over_the_given_group_and_backward_none():
    results = run_torchrun(WORKER, 2, "count")
    assert [r["lm_collectives"] for r in results] == [{"forward": ["MAX (21,)", "SUM (21, 2)"], "backward": []}] * 2
