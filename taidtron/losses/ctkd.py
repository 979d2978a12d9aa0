"""Curriculum temperature KD (CTKD; Li et al., AAAI 2023) on vocab-parallel logits: forward KL at a learnable global
temperature that a gradient-reversal layer makes *maximize* the loss, with a reversal strength that rises over a
curriculum.

    tau  = min_temperature + (max_temperature - min_temperature) * sigmoid(GRL_lambda(theta))
    loss = tau^2 * KL(softmax(T / tau) || softmax(s / tau))          per token

`vocab_parallel_ctkd_loss` is the loss, fused like the TAID loss (no vocabulary gather, O(tokens) statistics,
chunked temporaries, no collective in the backward); it differentiates with respect to the student's logits and to
`tau` (a tensor). Every tensor-parallel rank gets the same, complete d loss / d tau (computed from the global
statistics), so the temperature's gradient needs no reduction over the vocabulary shards. `CurriculumTemperature`
holds theta and the curriculum; the trainer optimizes it beside the student (`objective.ObjectiveParameters`).
Conventions as in `vocab_parallel.py`; the math, the official defaults and where taidtron differs: docs/taid.md.
"""

from __future__ import annotations

import math

import torch
import torch.distributed

from taidtron.losses import _math
from taidtron.losses.vocab_parallel import _check_inputs, _chunks

LOG2E, LN2 = _math.LOG2E, _math.LN2


def ctkd_chunk_stats(s, teacher, scale2: torch.Tensor, maxes2: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
    """Sums [n, 6] of one chunk relative to the global maxima `maxes2` [n, 2] (teacher, student), base-2 units, in
    float64: with a = T log2(e)/tau - max, b = s log2(e)/tau - max and e = 2^a,
    (Z_a = sum e, Z_b = sum 2^b, A1 = sum e (a - b), A2 = sum e (a - b) a, A3 = sum e a, B2 = sum 2^b b).

    float64 because d loss / d tau is what is left of these moments after they cancel to first order in
    log p - log q, and at tau ~ 15 the tempered distributions are close whatever the logits: from fp32 moments it
    came out ~1e-2 off, and ~1e-2 different when the vocabulary shards were summed in another order (tp 2).
    scale2: 0-dim float64 tensor log2(e) / tau. work: float64 scratch [3, >= n, v]."""
    n = s.shape[0]
    a = work[0, :n].copy_(teacher).mul_(scale2).sub_(maxes2[:, 0:1])
    b = work[1, :n].copy_(s).mul_(scale2).sub_(maxes2[:, 1:2])
    e = torch.exp2(b, out=work[2, :n])
    Z_b = e.sum(dim=-1)
    B2 = e.mul_(b).sum(dim=-1)
    e = torch.exp2(a, out=work[2, :n])
    Z_a = e.sum(dim=-1)
    d = b.sub_(a).neg_()  # a - b
    ea = a.mul_(e)
    A3 = ea.sum(dim=-1)
    A2 = ea.mul_(d).sum(dim=-1)
    A1 = e.mul_(d).sum(dim=-1)
    return torch.stack([Z_a, Z_b, A1, A2, A3, B2], dim=-1)


def ctkd_finalize(sums: torch.Tensor, maxes2: torch.Tensor, temperature: torch.Tensor):
    """(loss [N] nats, d loss / d tau [N], lse2 [N, 2]: log2-partitions of the scaled logits (teacher, student)),
    all float64 from the float64 sums.

    KL = E_p[a - b] - log Z_a + log Z_b (a, b the scaled logits). With a = T / tau, b = s / tau, the derivative is
    dKL/dtau = -(Cov_p(a - b, a) + E_q[b] - E_p[b]) / tau (shift-invariant, so computed on the shifted values), and
    d(tau^2 KL)/dtau = 2 tau KL + tau^2 dKL/dtau."""
    Z_a, Z_b, A1, A2, A3, B2 = sums.unbind(dim=-1)
    lz = torch.stack([Z_a, Z_b], dim=-1).log2()
    mean_d, mean_a = A1 / Z_a, A3 / Z_a  # E_p[a - b], E_p[a], base-2 units
    kl = LN2 * (mean_d + (Z_b / Z_a).log2())
    covariance = LN2 * LN2 * (A2 / Z_a - mean_d * mean_a)  # Cov_p(a - b, a), nats^2
    shift_of_b = LN2 * (B2 / Z_b - (mean_a - mean_d))  # E_q[b] - E_p[b], nats
    loss = temperature * temperature * kl
    d_loss = 2 * temperature * kl - temperature * (covariance + shift_of_b)
    return loss, d_loss, maxes2 + lz


def ctkd_chunk_grad(s, teacher, scale2, lse2, coef, out, work) -> None:
    """Write coef * (q - p) into `out` ([n, v], the logits' dtype) for one chunk: q, p the tempered softmaxes
    recomputed from lse2 [n, 2]; coef [n] = tau times the upstream gradient."""
    n = s.shape[0]
    p = _math._scaled(teacher, scale2, work[0, :n]).sub_(lse2[:, 0:1]).exp2_()
    q = _math._scaled(s, scale2, work[1, :n]).sub_(lse2[:, 1:2]).exp2_()
    torch.mul(q.sub_(p), coef.unsqueeze(-1), out=out)


class _VocabParallelCTKDLoss(torch.autograd.Function):
    """tau^2 KL(softmax(T/tau) || softmax(s/tau)) per token, vocabulary sharded over `group`.

    Shapes: student, teacher [N, V_local]; temperature 0-dim fp32; output [N] fp32. Forward: the maxima of the raw
    logits (tau > 0 keeps the order), collective 1: all_reduce(MAX) [N, 2] (float64); one pass of
    `ctkd_chunk_stats` relative to them, collective 2: all_reduce(SUM) [N, 6] (float64). Saved: the logits
    (references), lse2 [N, 2] and d loss / d tau [N]. Backward: no collective; the logits' gradient tau (q - p) g per
    chunk (`ctkd_chunk_grad`, fp32), tau's gradient sum(g * d loss / d tau), identical on every rank. Extra memory:
    three float64 [chunk_tokens, V_local] buffers in the forward, two fp32 ones in the backward, plus the gradient.
    """

    @staticmethod
    def forward(ctx, student, teacher, temperature, n_valid, group, chunk_tokens):
        n_tokens, device = student.shape[0], student.device
        scale2 = LOG2E / temperature.double()  # 0-dim tensor: no read back to the host
        if n_valid > 0:
            maxes = torch.stack([teacher[:, :n_valid].amax(dim=-1), student[:, :n_valid].amax(dim=-1)], dim=-1)
            maxes = maxes.double() * scale2
        else:
            maxes = torch.full((n_tokens, 2), -math.inf, dtype=torch.float64, device=device)
        if group is not None:
            torch.distributed.all_reduce(maxes, op=torch.distributed.ReduceOp.MAX, group=group)
        sums = torch.zeros((n_tokens, 6), dtype=torch.float64, device=device)
        if n_valid > 0 and n_tokens > 0:
            work = torch.empty((3, min(chunk_tokens, n_tokens), n_valid), dtype=torch.float64, device=device)
            for rows in _chunks(n_tokens, chunk_tokens):
                sums[rows] = ctkd_chunk_stats(
                    student[rows, :n_valid], teacher[rows, :n_valid], scale2, maxes[rows], work
                )
            del work
        if group is not None:
            torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM, group=group)
        loss, d_loss, lse2 = ctkd_finalize(sums, maxes, temperature.double())
        ctx.save_for_backward(student, teacher, temperature, lse2.float(), d_loss)  # d_loss: float64
        ctx.n_valid, ctx.chunk_tokens = n_valid, chunk_tokens
        return loss.float()

    @staticmethod
    def backward(ctx, grad_loss):
        student, teacher, temperature, lse2, d_loss = ctx.saved_tensors
        g = grad_loss.reshape(-1).float()
        grad_temperature = (g.double() * d_loss).sum().float() if ctx.needs_input_grad[2] else None
        grad = None
        if ctx.needs_input_grad[0]:
            n_valid, n_tokens = ctx.n_valid, student.shape[0]
            grad = torch.zeros_like(student) if n_valid < student.shape[1] else torch.empty_like(student)
            if n_valid > 0 and n_tokens > 0:
                scale2, coef = LOG2E / temperature, g * temperature
                work = torch.empty(
                    (2, min(ctx.chunk_tokens, n_tokens), n_valid), dtype=torch.float32, device=student.device
                )
                for rows in _chunks(n_tokens, ctx.chunk_tokens):
                    ctkd_chunk_grad(
                        student[rows, :n_valid],
                        teacher[rows, :n_valid],
                        scale2,
                        lse2[rows],
                        coef[rows],
                        grad[rows, :n_valid],
                        work,
                    )
        return grad, None, grad_temperature, None, None, None


def vocab_parallel_ctkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float | torch.Tensor,
    *,
    vocab_size: int | None = None,
    group: torch.distributed.ProcessGroup | None = None,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """tau^2 KL(softmax(T / tau) || softmax(s / tau)) per token (CTKD's distillation term; taidtron reports the KL,
    the official code the cross-entropy: the same gradient for the student, see docs/taid.md).

    Args:
        student_logits, teacher_logits: [..., V_local], same shape and dtype (fp32, bf16 or fp16).
        temperature: tau > 0, a float or a one-element tensor; a tensor that requires grad receives
            sum(upstream * d loss / d tau) (`CurriculumTemperature` passes theta's tempered value).
        vocab_size, group, chunk_tokens: as for `vocab_parallel_taid_loss`.
    Returns:
        fp32 [...] per-token loss, the same on every rank of `group`.
    Collectives: forward one MAX all-reduce of [tokens, 2] and one SUM all-reduce of [tokens, 6] (both float64);
    backward none.
    """
    _, _, n_valid, chunk_tokens = _check_inputs(student_logits, teacher_logits, vocab_size, group, chunk_tokens)
    if isinstance(temperature, torch.Tensor):
        if temperature.numel() != 1 or not temperature.dtype.is_floating_point:
            raise ValueError(f"temperature must be a one-element float tensor, got {temperature!r:.80}.")
        tau = temperature.reshape(()).float().to(student_logits.device)
    else:
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature={temperature!r} must be a finite number > 0.")
        tau = torch.tensor(float(temperature), dtype=torch.float32, device=student_logits.device)
    lead, local_vocab = student_logits.shape[:-1], student_logits.shape[-1]
    loss = _VocabParallelCTKDLoss.apply(
        student_logits.reshape(-1, local_vocab),
        teacher_logits.detach().reshape(-1, local_vocab),
        tau,
        n_valid,
        group,
        chunk_tokens,
    )
    return loss.view(lead)


# ---- the learnable temperature ------------------------------------------------------------------------------------


class _GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -strength (Ganin & Lempitsky 2015)."""

    @staticmethod
    def forward(ctx, x, strength: float):
        ctx.strength = strength
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return -ctx.strength * grad, None


class CurriculumTemperature(torch.nn.Module):
    """CTKD's global temperature: one fp32 parameter theta (initialized to 1, as in both official codes) behind a
    gradient-reversal layer, so that minimizing the loss moves theta to *raise* it, with a strength lambda that rises
    along a cosine from 0 to `lambda_max` over the first `ramp_fraction` of the run and then stays there.

    Call `set_progress(step, total_steps)` before each optimizer step; calling the module gives tau (0-dim, on
    theta's device), differentiable into theta.
    """

    def __init__(self, *, min_temperature: float, max_temperature: float, lambda_max: float, ramp_fraction: float):
        super().__init__()
        if not 0 < min_temperature < max_temperature:
            raise ValueError(
                f"need 0 < min_temperature ({min_temperature}) < max_temperature ({max_temperature}) for ctkd."
            )
        self.min_temperature, self.max_temperature = float(min_temperature), float(max_temperature)
        self.lambda_max, self.ramp_fraction = float(lambda_max), float(ramp_fraction)
        self.theta = torch.nn.Parameter(torch.ones((), dtype=torch.float32))
        self.strength = 0.0
        """The reversal strength lambda of the current step."""

    def set_progress(self, step: int, total_steps: int) -> None:
        """lambda for the optimizer step after `step` steps done, of `total_steps`: lambda_max (1 - cos(pi x)) / 2,
        x = step / (ramp_fraction * total_steps) capped at 1."""
        ramp = self.ramp_fraction * total_steps
        x = 1.0 if ramp <= 0 else min(1.0, step / ramp)
        self.strength = self.lambda_max * (1.0 - math.cos(math.pi * x)) / 2.0

    def forward(self) -> torch.Tensor:
        reversed_theta = _GradientReversal.apply(self.theta, self.strength)
        return self.min_temperature + (self.max_temperature - self.min_temperature) * torch.sigmoid(reversed_theta)
