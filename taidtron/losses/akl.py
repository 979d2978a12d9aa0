"""Adaptive KL (AKL; Wu et al., 2024, arXiv 2404.02657) on vocab-parallel logits, as the official TAID code defines
it (with its head mask applied to the tokens it was computed for; docs/taid.md says why).

Per token, with p the teacher's and q the student's softmax:

    head  = the teacher's most likely tokens: v is in the head when the teacher's mass on tokens *strictly* more
            likely than v is at most 1 - mu (the official ascending cumulative sum >= mu)
    g_head = sum_{v in head} |p_v - q_v|,   g_tail = sum_{v not in head} |p_v - q_v|
    loss  = (g_head * CE(p, q) + g_tail * KL(q || p)) / (g_head + g_tail)

The weights are not detached and the head term is the cross-entropy, as in the official code, so the student's
gradient is that code's. (When p equals q exactly, both gaps are 0 and the official weights 0/0; here both are 1/2.)

The split needs the teacher's sorted mass, which no rank has: `head_threshold` finds, per token, the teacher logit at
which the mass strictly above crosses 1 - mu by a radix select over the logits' bit patterns (8 bits per round), one
SUM all-reduce of a [tokens, 256] histogram per round: exact, whatever the vocabulary sharding, with no sort and no
gather. Tokens with equal teacher logits fall on the same side. Conventions as in `vocab_parallel.py`.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.distributed

from taidtron.losses.vocab_parallel import (
    _check_weight,
    _SumOverVocabShards,
    _VocabParallelLogSumExpPair,
    vocab_parallel_chunks,
)

RADIX_BITS = 8
"""Bits of the teacher logits' keys decided per round (a [tokens, 2**RADIX_BITS] histogram all-reduced each)."""
_KEY_BITS = {torch.float32: 32, torch.bfloat16: 16, torch.float16: 24}
"""Leading key bits that can differ between two logits of each dtype (converted to fp32 exactly: bf16 keeps 16 bits,
fp16 19, rounded up to whole rounds); the bits below are equal for all logits of one sign, so they need no round."""


def order_keys(logits: torch.Tensor) -> torch.Tensor:
    """int64 keys in [0, 2**32) that order like the logits' fp32 values (finite values; -0.0 counts as +0.0)."""
    bits = (logits.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    ordered = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # negative floats: flip the magnitude bits, so signed order = order
    return ordered.long() + (1 << 31)


def head_threshold(teacher: torch.Tensor, mu: float, group) -> tuple[torch.Tensor, int]:
    """The head of each token's teacher distribution, as (prefix [n] int64, shift): v is in the head exactly when
    `order_keys(T_v) >> shift >= prefix`. teacher: [n, v] this rank's valid columns (v may be 0).

    Radix select: the boundary logit b is the one whose own mass takes the mass at or above it past 1 - mu while the
    mass strictly above it stays at most 1 - mu. Its key is found 8 bits at a time from the top: each round
    histograms the unnormalized masses exp(T - max) of the tokens still matching the prefix by their next 8 bits,
    all-reduces the histogram over `group`, and picks the digit where the mass above crosses (1 - mu) * Z.
    Collectives: one MAX all-reduce [n] and 2, 3 or 4 SUM all-reduces [n, 256] (bf16, fp16, fp32 logits).
    Temporaries: a few [n, v] buffers (int64 keys, fp32 masses).
    """
    n, v = teacher.shape
    maxima = teacher.amax(dim=-1).float() if v > 0 else torch.full((n,), -math.inf, device=teacher.device)
    if group is not None:
        torch.distributed.all_reduce(maxima, op=torch.distributed.ReduceOp.MAX, group=group)
    mass = (teacher.float() - maxima.unsqueeze(-1)).exp_() if v > 0 else None  # a new tensor: teacher stays
    keys = order_keys(teacher) if v > 0 else None
    bins = 1 << RADIX_BITS
    prefix = torch.zeros(n, dtype=torch.int64, device=teacher.device)
    above = torch.zeros(n, dtype=torch.float64, device=teacher.device)  # mass strictly above the prefix's bucket
    target = None
    rounds = -(-_KEY_BITS[teacher.dtype] // RADIX_BITS)
    shift = 32
    for _ in range(rounds):
        shift -= RADIX_BITS
        histogram = torch.zeros((n, bins), dtype=torch.float32, device=teacher.device)
        if v > 0:
            in_bucket = mass if shift + RADIX_BITS == 32 else mass * ((keys >> (shift + RADIX_BITS)) == prefix[:, None])
            histogram.scatter_add_(1, (keys >> shift) & (bins - 1), in_bucket)
        if group is not None:
            torch.distributed.all_reduce(histogram, op=torch.distributed.ReduceOp.SUM, group=group)
        histogram = histogram.double()
        at_or_above = histogram.flip(-1).cumsum(-1).flip(-1)  # [n, bins]: mass of the digits >= d in the bucket
        if target is None:
            target = (1.0 - mu) * at_or_above[:, 0]
        # the largest digit whose mass at or above still exceeds the target (clamped: rounding at a boundary)
        digit = ((above[:, None] + at_or_above) > target[:, None]).sum(-1).sub_(1).clamp_(0, bins - 1)
        strictly_above = torch.cat([at_or_above[:, 1:], at_or_above.new_zeros(n, 1)], dim=-1)
        above = above + strictly_above.gather(1, digit.unsqueeze(-1)).squeeze(-1)
        prefix = (prefix << RADIX_BITS) | digit
    return prefix, shift


def _akl_chunk(student, teacher, prefix, shift: int, group):
    """AKL of one chunk (autograd through a vocab-parallel log-softmax, as the other baselines): [n] fp32."""
    student = student.float()  # one cast, so every gradient path adds up in fp32
    lse_s, lse_t = _VocabParallelLogSumExpPair.apply(student, teacher, group)
    log_q = student - lse_s.unsqueeze(-1)
    log_p = teacher.float() - lse_t.unsqueeze(-1)
    q, p = log_q.exp(), log_p.exp()
    head = (order_keys(teacher) >> shift) >= prefix.unsqueeze(-1)
    gap = (p - q).abs()
    partial = torch.stack(
        [
            torch.where(head, gap, 0.0).sum(dim=-1),
            torch.where(head, 0.0, gap).sum(dim=-1),
            -(p * log_q).sum(dim=-1),  # the official head term: the cross-entropy
            (q * (log_q - log_p)).sum(dim=-1),
        ],
        dim=-1,
    )
    head_gap, tail_gap, cross_entropy, reverse_kl = _SumOverVocabShards.apply(partial, group).unbind(dim=-1)
    total = head_gap + tail_gap
    has_gap = total > 0
    safe = torch.where(has_gap, total, 1.0)
    head_weight = torch.where(has_gap, head_gap / safe, 0.5)
    tail_weight = torch.where(has_gap, tail_gap / safe, 0.5)
    return head_weight * cross_entropy + tail_weight * reverse_kl


def vocab_parallel_akl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    mu: float = 0.5,
    vocab_size: int | None = None,
    group: torch.distributed.ProcessGroup | None = None,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """Adaptive KL per token (module docstring); `mu` in (0, 1), the official default 0.5.

    Chunked over tokens like the other baselines (`vocab_parallel_chunks`): per chunk, forward one MAX [chunk] and
    2-4 SUM [chunk, 256] all-reduces for the split (`head_threshold`, outside the checkpoint), then MAX [chunk, 2],
    SUM [chunk, 2] (both log-softmaxes) and SUM [chunk, 4] (the gaps, CE and reverse KL); backward the recompute's
    MAX, SUM [chunk, 2] and SUM [chunk, 4], and SUM [chunk] of the log-sum-exp gradient.
    """
    mu = _check_weight("mu", mu, low_open=True)
    prepare = functools.partial(head_threshold, mu=mu, group=group)  # (prefix, shift) of each chunk
    chunk_loss = functools.partial(_akl_chunk, group=group)
    return vocab_parallel_chunks(
        student_logits, teacher_logits, vocab_size, group, chunk_tokens, chunk_loss, prepare=prepare
    )
