"""The teacher as stored log-probs (`taidtron.losses.cached_teacher`): the writer's top-K and log-probs against a
float64 reference written from the definitions, the shard a run rebuilds from them, and every objective that runs
from a cache giving the online teacher's loss and gradient from the full log-probs. Across TP shards (gloo): the
merged top-K and the rebuilt shards equal the single-process ones."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from taidtron.losses import (
    FROM_LOG_PROBS,
    LOSSES,
    OBJECTIVES,
    vocab_parallel_log_probs,
    vocab_parallel_top_k,
)
from taidtron.losses.cached_teacher import teacher_logits_from_full, teacher_logits_from_top_k
from tests.losses.loss_reference import PADDED_VOCAB, VOCAB, loss_options, make_logits
from tests.support import run_torchrun

WORKER = Path(__file__).with_name("cached_teacher_worker.py")


def reference_top_k(teacher: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 from the definitions: log-softmax over the true vocabulary, its k largest, log of the rest's mass."""
    log_p = torch.log_softmax(teacher[..., :VOCAB].double().reshape(-1, VOCAB), dim=-1)
    values, ids = log_p.topk(k, dim=-1)
    rest = log_p.scatter(-1, ids, -math.inf)
    return values, ids, torch.logsumexp(rest, dim=-1)


@pytest.mark.parametrize("k", [1, 8, 128, VOCAB - 1, VOCAB])
def test_top_k_matches_the_float64_definition_with_junk_padding(k):
    _, teacher = make_logits((6, 5), "wide", seed=3)
    log_probs, ids, tail = vocab_parallel_top_k(teacher, k, vocab_size=VOCAB, chunk_tokens=7)
    want_values, want_ids, want_tail = reference_top_k(teacher, k)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(log_probs.double(), want_values, rtol=0, atol=2e-5)
    if k == VOCAB:
        assert torch.isneginf(tail).all()
    else:
        torch.testing.assert_close(tail.double(), want_tail, rtol=0, atol=2e-5)
    # the K entries and the tail hold the whole distribution
    total = torch.logsumexp(torch.cat([log_probs.double(), tail.double().unsqueeze(-1)], dim=-1), dim=-1)
    torch.testing.assert_close(total, torch.zeros_like(total), rtol=0, atol=1e-5)


def test_tail_keeps_its_precision_when_the_top_k_hold_nearly_all_the_mass():
    """log(1 - sum p_K) would cancel to -inf or garbage here; the tail is computed from the entries left out."""
    teacher = torch.full((4, PADDED_VOCAB), -40.0)
    teacher[:, 0] = 0.0  # one token holds all but ~1e-15 of the mass
    _, _, tail = vocab_parallel_top_k(teacher, 1, vocab_size=VOCAB)
    _, _, want = reference_top_k(teacher, 1)
    assert torch.isfinite(tail).all()
    torch.testing.assert_close(tail.double(), want, rtol=1e-6, atol=0)


def test_log_probs_match_the_float64_log_softmax_over_the_true_vocabulary():
    _, teacher = make_logits((3, 4), "extreme", seed=5)
    got = vocab_parallel_log_probs(teacher, vocab_size=VOCAB, chunk_tokens=5)
    want = torch.log_softmax(teacher[..., :VOCAB].double().reshape(-1, VOCAB), dim=-1)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=5e-5)


def test_top_k_shard_places_entries_at_their_ids_and_spreads_the_tail_uniformly():
    _, teacher = make_logits((2, 3), "wide", seed=7)
    k = 16
    log_probs, ids, tail = vocab_parallel_top_k(teacher, k, vocab_size=VOCAB)
    local = PADDED_VOCAB // 2
    for rank in range(2):
        shard = teacher_logits_from_top_k(
            log_probs, ids, tail, vocab_size=VOCAB, local_vocab=local, rank=rank, dtype=torch.float32
        )
        assert shard.shape == (6, local) and shard.stride(-1) == 1
        want = (tail - math.log(VOCAB - k)).unsqueeze(-1).expand(6, local).clone()
        for row in range(6):
            for value, token in zip(log_probs[row], ids[row]):
                if rank * local <= token < (rank + 1) * local:
                    want[row, token - rank * local] = value
        torch.testing.assert_close(shard, want, rtol=0, atol=0)
    full = torch.cat(
        [
            teacher_logits_from_top_k(
                log_probs, ids, tail, vocab_size=VOCAB, local_vocab=local, rank=r, dtype=torch.float64
            )
            for r in range(2)
        ],
        dim=-1,
    )[:, :VOCAB]
    torch.testing.assert_close(torch.logsumexp(full, dim=-1), torch.zeros(6, dtype=torch.float64), atol=1e-5, rtol=0)


def test_the_objectives_that_run_from_a_cache_are_every_distillation_loss():
    assert set(FROM_LOG_PROBS) == set(OBJECTIVES) - {"lm"}


@pytest.mark.parametrize("name", FROM_LOG_PROBS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_cacheable_loss_gives_the_online_loss_and_gradient_from_the_full_log_probs(name, dtype):
    """softmax(log p_T) = softmax(T): the loss and the student's gradient are the online teacher's, to the rounding
    of the logits' dtype (bf16 rounds log p_T and T differently)."""
    student, teacher = make_logits((5, 3), "wide", seed=11, dtype=dtype)
    full = vocab_parallel_log_probs(teacher, vocab_size=VOCAB)
    rebuilt = teacher_logits_from_full(full, local_vocab=PADDED_VOCAB, dtype=dtype).view(5, 3, -1)
    options = loss_options(name, (5, 3))

    def loss_and_grad(teacher_logits):
        s = student.clone().requires_grad_(True)
        loss = LOSSES[name](s, teacher_logits, t=0.6, vocab_size=VOCAB, group=None, **options)
        loss.sum().backward()
        return loss.detach(), s.grad.float()

    (online, online_grad), (cached, cached_grad) = loss_and_grad(teacher), loss_and_grad(rebuilt)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}
    torch.testing.assert_close(cached, online, **tol)
    torch.testing.assert_close(cached_grad, online_grad, **tol)


@pytest.mark.multiprocess
@pytest.mark.parametrize("tp", [2, 4])
def test_top_k_across_tensor_parallel_shards_equals_the_single_process_result(tp):
    (result, *rest) = run_torchrun(WORKER, tp)
    assert all(r == result for r in rest)
    assert result["checks"] == ["top_k", "log_probs", "shards", "losses"]
