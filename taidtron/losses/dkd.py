"""Decoupled knowledge distillation (DKD; Zhao et al., CVPR 2022) on vocab-parallel logits, fused like the TAID loss:
no vocabulary gather, O(tokens) statistics, chunked temporaries, no collective in the backward.

Per token with label g (the next token), at temperature tau (p = softmax(T / tau), q = softmax(s / tau)):

    TCKD = KL([p_g, 1 - p_g] || [q_g, 1 - q_g])               target class against all the others
    NCKD = KL(p_hat || q_hat)                                  p_hat, q_hat: p, q renormalized without class g
    loss = tau^2 * (alpha * TCKD + beta * NCKD)

A token whose label is not a valid id (negative, e.g. -100, or >= vocab_size) is ignored: its loss and gradient are
exactly 0 (the official code maps -100 to the pad id and masks the token). Conventions (shapes, padding columns,
`group`, dtypes) as in `vocab_parallel.py`. The math, the official defaults and where taidtron differs: docs/taid.md.
"""

from __future__ import annotations

import math

import torch
import torch.distributed

from taidtron.losses import _math
from taidtron.losses.vocab_parallel import _check_inputs, _chunks

LOG2E, LN2 = _math.LOG2E, _math.LN2


def _label_columns(labels: torch.Tensor, first_column: int, n_valid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(column [N] of each label in this rank's slice, clamped into it; owned [N]: this rank holds the label)."""
    local = labels - first_column
    owned = (local >= 0) & (local < n_valid)
    return local.clamp(0, max(n_valid - 1, 0)), owned


def _scaled_shifted(x: torch.Tensor, scale2: float, shift: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
    """out = x * scale2 - shift (fp32; shift [n, 1] or None)."""
    _math._scaled(x, scale2, out)
    return out if shift is None else out.sub_(shift)


def _exclude_labels(x: torch.Tensor, column: torch.Tensor, owned: torch.Tensor) -> torch.Tensor:
    """The value at each owned row's label column [n], which is then set to -inf in `x` (other rows untouched)."""
    at_label = x.gather(1, column.unsqueeze(1)).squeeze(1)
    x.scatter_(1, column.unsqueeze(1), torch.where(owned, -math.inf, at_label).unsqueeze(1))
    return torch.where(owned, at_label, 0.0)


def dkd_chunk_maxima(s, teacher, column, owned, scale2: float, work) -> torch.Tensor:
    """Non-target maxima [n, 2] (teacher, student) of one chunk in base-2 units (times log2(e) / tau)."""
    n = s.shape[0]
    a = _scaled_shifted(teacher, scale2, None, work[0, :n])
    b = _scaled_shifted(s, scale2, None, work[1, :n])
    _exclude_labels(a, column, owned)
    _exclude_labels(b, column, owned)
    return torch.stack([a.amax(dim=-1), b.amax(dim=-1)], dim=-1)


def dkd_chunk_stats(s, teacher, column, owned, scale2: float, maxes2, work) -> torch.Tensor:
    """Sums [n, 6] of one chunk relative to the global non-target maxima `maxes2` [n, 2], base-2 units:
    (Z_a, Z_b, K, a_g, b_g, owned) with a = T log2(e)/tau - max, b = s log2(e)/tau - max (non-target maxima),
    Z = sum over non-target columns of 2^a (2^b), K = sum over non-target columns of 2^a (a - b), and a_g, b_g the
    label's values (0 on ranks that do not hold the label). work: fp32 scratch [3, >= n, v]."""
    n = s.shape[0]
    a = _scaled_shifted(teacher, scale2, maxes2[:, 0:1], work[0, :n])
    b = _scaled_shifted(s, scale2, maxes2[:, 1:2], work[1, :n])
    d = torch.sub(a, b, out=work[2, :n])  # a - b, finite at the label too (its term is zeroed by 2^-inf below)
    a_g = _exclude_labels(a, column, owned)
    b_g = _exclude_labels(b, column, owned)
    e_b = b.exp2_()
    Z_b = e_b.sum(dim=-1)
    e_a = a.exp2_()
    Z_a = e_a.sum(dim=-1)
    K = d.mul_(e_a).sum(dim=-1)
    return torch.stack([Z_a, Z_b, K, a_g, b_g, owned.float()], dim=-1)


def dkd_finalize(sums, maxes2, alpha: float, beta: float, temperature: float):
    """From the global sums [N, 6]: the loss [N] (nats), the non-target log2-partitions lse2 [N, 2] of the scaled
    logits (teacher, student) and the gradient coefficients per unit upstream gradient [N, 3]:
    grad = (c_q * q_hat - c_p * p_hat) off the label, c_g at the label (all 0 for an ignored token)."""
    Z_a, Z_b, K, a_g, b_g, owned = sums.unbind(dim=-1)
    valid = owned > 0
    lz_a, lz_b = Z_a.log2(), Z_b.log2()  # non-target partitions, relative to the non-target maxima
    l_a, l_b = torch.logaddexp2(lz_a, a_g), torch.logaddexp2(lz_b, b_g)  # with the target class
    log2_p, log2_q = a_g - l_a, b_g - l_b
    log2_p_rest, log2_q_rest = lz_a - l_a, lz_b - l_b  # log2(1 - p_g), log2(1 - q_g), without cancellation
    p_g, p_rest = log2_p.exp2(), log2_p_rest.exp2()
    tckd = p_g * (log2_p - log2_q) + p_rest * (log2_p_rest - log2_q_rest)
    nckd = K / Z_a + (Z_b / Z_a).log2()  # the log of the ratio: two log-partitions would cancel to ~1e-6
    tau2 = temperature * temperature
    loss = torch.where(valid, tau2 * LN2 * (alpha * tckd + beta * nckd), 0.0)
    gap = log2_q.exp2() - p_g  # q_g - p_g
    coef = torch.stack(
        [temperature * (beta - alpha * gap), torch.full_like(gap, temperature * beta), temperature * alpha * gap],
        dim=-1,
    )
    coef = torch.where(valid.unsqueeze(-1), coef, 0.0)
    return loss, maxes2 + torch.stack([lz_a, lz_b], dim=-1), coef


def dkd_chunk_grad(s, teacher, column, owned, scale2: float, lse2, coef, out, work) -> None:
    """Write the gradient of one chunk into `out` ([n, v], the logits' dtype): coef [n, 3] already times the upstream
    gradient; p_hat, q_hat recomputed from the saved non-target log2-partitions lse2 [n, 2]."""
    n = s.shape[0]
    p_hat = _scaled_shifted(teacher, scale2, lse2[:, 0:1], work[0, :n]).exp2_()
    q_hat = _scaled_shifted(s, scale2, lse2[:, 1:2], work[1, :n]).exp2_()
    grad = q_hat.mul_(coef[:, 0:1]).sub_(p_hat.mul_(coef[:, 1:2]))  # off the label (the label's entry is replaced)
    at_label = grad.gather(1, column.unsqueeze(1)).squeeze(1)
    grad.scatter_(1, column.unsqueeze(1), torch.where(owned, coef[:, 2], at_label).unsqueeze(1))
    out.copy_(grad)


class _VocabParallelDKDLoss(torch.autograd.Function):
    """DKD per token, vocabulary sharded over `group`. Shapes: student, teacher [N, V_local]; column, owned [N]
    (`_label_columns`); output [N] fp32.

    Forward, two passes over the logits in chunks: (1) the maxima of the scaled logits without the label's column,
    collective 1: all_reduce(MAX) [N, 2]; (2) the sums of `dkd_chunk_stats` relative to them, collective 2:
    all_reduce(SUM) [N, 6] (the label's values come from the one rank that holds it). Saved for backward: the
    logits (references), column, owned, lse2 [N, 2] and the gradient coefficients [N, 3]. Backward: no collective;
    per chunk the gradient is recomputed from them (`dkd_chunk_grad`). Extra memory: three fp32
    [chunk_tokens, V_local] buffers plus the gradient.
    """

    @staticmethod
    def forward(ctx, student, teacher, column, owned, n_valid, group, chunk_tokens, alpha, beta, temperature):
        n_tokens = student.shape[0]
        scale2 = LOG2E / temperature
        maxes = torch.full((n_tokens, 2), -math.inf, dtype=torch.float32, device=student.device)
        sums = torch.zeros((n_tokens, 6), dtype=torch.float32, device=student.device)
        work = None
        if n_valid > 0 and n_tokens > 0:
            work = torch.empty((3, min(chunk_tokens, n_tokens), n_valid), dtype=torch.float32, device=student.device)
            for rows in _chunks(n_tokens, chunk_tokens):
                maxes[rows] = dkd_chunk_maxima(
                    student[rows, :n_valid], teacher[rows, :n_valid], column[rows], owned[rows], scale2, work
                )
        if group is not None:
            torch.distributed.all_reduce(maxes, op=torch.distributed.ReduceOp.MAX, group=group)
        if work is not None:
            for rows in _chunks(n_tokens, chunk_tokens):
                sums[rows] = dkd_chunk_stats(
                    student[rows, :n_valid],
                    teacher[rows, :n_valid],
                    column[rows],
                    owned[rows],
                    scale2,
                    maxes[rows],
                    work,
                )
        del work
        if group is not None:
            torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM, group=group)
        loss, lse2, coef = dkd_finalize(sums, maxes, alpha, beta, temperature)
        ctx.save_for_backward(student, teacher, column, owned, lse2, coef)
        ctx.n_valid, ctx.chunk_tokens, ctx.scale2 = n_valid, chunk_tokens, scale2
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        none = (None,) * 9
        if not ctx.needs_input_grad[0]:
            return None, *none
        student, teacher, column, owned, lse2, coef = ctx.saved_tensors
        n_valid, n_tokens = ctx.n_valid, student.shape[0]
        grad = torch.zeros_like(student) if n_valid < student.shape[1] else torch.empty_like(student)
        if n_valid > 0 and n_tokens > 0:
            coef = coef * grad_loss.reshape(-1, 1).float()
            work = torch.empty(
                (2, min(ctx.chunk_tokens, n_tokens), n_valid), dtype=torch.float32, device=student.device
            )
            for rows in _chunks(n_tokens, ctx.chunk_tokens):
                dkd_chunk_grad(
                    student[rows, :n_valid],
                    teacher[rows, :n_valid],
                    column[rows],
                    owned[rows],
                    ctx.scale2,
                    lse2[rows],
                    coef[rows],
                    grad[rows, :n_valid],
                    work,
                )
        return grad, *none


def vocab_parallel_dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 0.5,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    group: torch.distributed.ProcessGroup | None = None,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """DKD per token: tau^2 (alpha TCKD + beta NCKD) (module docstring); defaults are the official TAID code's.

    Args:
        student_logits, teacher_logits: [..., V_local], same shape and dtype (fp32, bf16 or fp16).
        labels: [...] int64 global token ids; ids outside [0, vocab_size) mark ignored tokens (loss 0).
        alpha, beta: weights of TCKD and NCKD (>= 0). temperature: tau > 0.
        vocab_size, group, chunk_tokens: as for `vocab_parallel_taid_loss`.
    Returns:
        fp32 [...] per-token loss, the same on every rank of `group`.
    Collectives: forward one MAX all-reduce of [tokens, 2] and one SUM all-reduce of [tokens, 6]; backward none.
    """
    rank, _, n_valid, chunk_tokens = _check_inputs(student_logits, teacher_logits, vocab_size, group, chunk_tokens)
    if not isinstance(labels, torch.Tensor) or labels.shape != student_logits.shape[:-1]:
        raise ValueError(
            f"dkd needs labels shaped like the logits without the vocabulary dimension, "
            f"{tuple(student_logits.shape[:-1])}; got {getattr(labels, 'shape', labels)!r}."
        )
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"dkd labels must be integer token ids, got {labels.dtype}.")
    local_vocab = student_logits.shape[-1]
    padded = local_vocab * (1 if group is None else torch.distributed.get_world_size(group))
    if (vocab_size or padded) < 2:
        raise ValueError("dkd needs a vocabulary of at least 2 tokens (a target and a non-target class).")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"dkd {name}={value!r} must be a finite number >= 0.")
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"dkd temperature={temperature!r} must be a finite number > 0.")
    column, owned = _label_columns(labels.reshape(-1).long().to(student_logits.device), rank * local_vocab, n_valid)
    loss = _VocabParallelDKDLoss.apply(
        student_logits.reshape(-1, local_vocab),
        teacher_logits.detach().reshape(-1, local_vocab),
        column,
        owned,
        n_valid,
        group,
        chunk_tokens,
        float(alpha),
        float(beta),
        float(temperature),
    )
    return loss.view(labels.shape)
