"""Pure per-chunk math of the vocab-parallel losses: no collectives, no autograd bookkeeping.

Everything here works on one chunk of tokens and on this rank's *valid* vocabulary columns only (padding columns
are sliced off by the caller, so whatever they hold never enters a softmax). Statistics are fp32 whatever the
logits' dtype. The two TAID chunk kernels (`taid_chunk_stats`, `taid_chunk_grad`) are the functions a fused GPU
kernel would replace, reading each chunk of logits once and writing O(tokens) statistics or the gradient chunk
(here, in eager torch, they make several cache-resident passes over the chunk).

Notation, per token over this rank's valid columns v (docs/losses.md):
    z = (1 - t) * s + t * T
    m_z = max z,  m_s = max s
    Z_z = sum exp(z - m_z),  Z_s = sum exp(s - m_s)
    A = sum exp(z - m_z) * (s - m_s)            (shifted by m_s so large logits do not cancel)
    B = sum exp(z - m_z) * (z - m_z)            (only for the entropy of p_t, i.e. a KL instead of a CE)
    loss = log Z_s - A / Z_z                    = -sum p_t log q
    KL   = loss - (log Z_z - B / Z_z)           = loss - H(p_t)

Internally the maxima, A and B are kept in base-2 units (times log2(e)) so that exp2 computes the exponentials:
torch's CPU exp2 is about 3x faster than exp, and a GPU computes exp through exp2 anyway.
"""

from __future__ import annotations

import math

import torch

LOG2E = 1.4426950408889634  # log2(e)
LN2 = 0.6931471805599453  # ln(2)


def valid_columns(vocab_size: int, local_vocab: int, rank: int) -> int:
    """Number of leading columns of rank `rank`'s slice that hold real (non-padding) vocabulary entries."""
    return max(0, min(local_vocab, vocab_size - rank * local_vocab))


def new_workspace(with_entropy: bool, chunk_tokens: int, columns: int, device) -> torch.Tensor:
    """The chunk kernels' scratch space: [2 or 3, chunk_tokens, columns] fp32, allocated once per pass."""
    return torch.empty((3 if with_entropy else 2, chunk_tokens, columns), dtype=torch.float32, device=device)


def _scaled(x: torch.Tensor, coef: float, out: torch.Tensor) -> torch.Tensor:
    """out = coef * x in fp32, rounding once in fp32 whatever x's dtype."""
    if x.dtype == torch.float32:
        return torch.mul(x, coef, out=out)
    return out.copy_(x).mul_(coef)  # upcast first: a product in bf16 would round to bf16


def interpolate_log2(s: torch.Tensor, teacher: torch.Tensor, t: float, out: torch.Tensor) -> torch.Tensor:
    """out = log2(e) * ((1 - t) * s + t * T), i.e. z in base-2 units, fp32 (out: [n, v] fp32)."""
    if t == 1.0:
        return _scaled(teacher, LOG2E, out)  # forward KL: p_t is the teacher's softmax
    return _scaled(s, (1.0 - t) * LOG2E, out).add_(teacher, alpha=t * LOG2E)  # mixed-dtype add_ is fp32


def taid_chunk_stats(
    s: torch.Tensor, teacher: torch.Tensor, t: float, with_entropy: bool, work: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Local statistics of one chunk, relative to the chunk's *local* maxima, in base-2 units.

    s, teacher: [n, v] logits (this rank's valid columns, v >= 1), any float dtype.
    work: fp32 scratch [>= 2 (3 with_entropy), >= n, v] (see `new_workspace`).
    Returns maxes [n, 2] = log2(e) * (m_z, m_s) and sums [n, 3 or 4] = (Z_z, Z_s, log2(e) * A[, log2(e) * B]),
    all fp32. Base 2 lets exp2 do the exponentials (about 3x cheaper than exp on CPU); Z_z and Z_s are unchanged.
    """
    n = s.shape[0]
    z2 = interpolate_log2(s, teacher, t, work[0, :n])  # [n, v] fp32, log2(e) * z
    m_z2 = z2.amax(dim=-1, keepdim=True)  # [n, 1]
    m_s2 = s.amax(dim=-1, keepdim=True).float().mul_(LOG2E)  # [n, 1] (a max is exact in any dtype)
    z2.sub_(m_z2)
    if with_entropy:
        e_z = torch.exp2(z2, out=work[2, :n])  # the entropy term needs z - m_z and its exp side by side
        B2 = z2.mul_(e_z).sum(dim=-1)  # products in place: no temporary beyond the workspace
    else:
        e_z = z2.exp2_()  # exp(z - m_z)
    Z_z = e_z.sum(dim=-1)
    d_s2 = torch.add(m_s2.neg(), s, alpha=LOG2E, out=work[1, :n])  # log2(e) * (s - m_s), fp32
    A2 = e_z.mul_(d_s2).sum(dim=-1)  # e_z is not needed after this
    Z_s = d_s2.exp2_().sum(dim=-1)
    sums = [Z_z, Z_s, A2, B2] if with_entropy else [Z_z, Z_s, A2]
    return torch.cat([m_z2, m_s2], dim=-1), torch.stack(sums, dim=-1)


def rescale_partial_stats(local_max: torch.Tensor, global_max: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """Re-express one rank's sums relative to the global maxima, so that summing them over ranks is exact.

    local_max, global_max: [n, 2] (m_z, m_s); sums: [n, 3 or 4] relative to local_max; all in base-2 units.
    Returns a new tensor:
        Z_z' = e_z * Z_z,  Z_s' = e_s * Z_s,  with e_* = 2^(m_local - m_global) <= 1
        A'   = e_z * (A + (m_s_local - m_s_global) * Z_z)
        B'   = e_z * (B + (m_z_local - m_z_global) * Z_z)
    """
    shift = local_max - global_max  # [n, 2], <= 0
    scale = shift.exp2()
    Z_z = sums[:, 0]
    out = torch.empty_like(sums)
    out[:, 0] = scale[:, 0] * Z_z
    out[:, 1] = scale[:, 1] * sums[:, 1]
    out[:, 2] = scale[:, 0] * (sums[:, 2] + shift[:, 1] * Z_z)
    if sums.shape[1] == 4:
        out[:, 3] = scale[:, 0] * (sums[:, 3] + shift[:, 0] * Z_z)
    return out


def taid_finalize(maxes: torch.Tensor, sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss [n] (nats) and lse2 [n, 2] = log2 of the partition functions of z and s, from global stats.

    loss = ln2 * (log2 Z_s - A / Z_z)  [ - ln2 * (log2 Z_z - B / Z_z) for the KL ]
    """
    log2_Z = sums[:, :2].log2()  # [n, 2]
    loss = log2_Z[:, 1] - sums[:, 2] / sums[:, 0]  # -sum_v p_t log2 q
    if sums.shape[1] == 4:
        loss = loss - (log2_Z[:, 0] - sums[:, 3] / sums[:, 0])  # minus the entropy of p_t: KL(p_t || q)
    return loss * LN2, maxes + log2_Z


def taid_chunk_grad(
    s: torch.Tensor,
    teacher: torch.Tensor,
    t: float,
    lse2: torch.Tensor,
    grad_loss: torch.Tensor,
    out: torch.Tensor,
    work: torch.Tensor,
) -> None:
    """Write (q - p_t) * g into `out` for one chunk, recomputing q and p_t from the saved log-partitions.

    s, teacher: [n, v]; lse2: [n, 2] (base 2, from `taid_finalize`); grad_loss: [n] fp32, any sign; out: [n, v] view
    in the logits' dtype; work: fp32 scratch [2, >= n, v].
    |g| is folded into the exponents, 2^(x - lse2 + log2 |g|) = |g| * 2^(x - lse2), which saves a pass (g = 0 gives
    0), and the sign of g is applied by the pass that writes `out` (no host read of the signs).
    """
    n = s.shape[0]
    shift = lse2 - grad_loss.abs().log2().unsqueeze(-1)  # [n, 2]
    p = interpolate_log2(s, teacher, t, work[0, :n]).sub_(shift[:, 0:1]).exp2_()  # |g| * p_t, [n, v] fp32
    q = torch.add(shift[:, 1:2].neg(), s, alpha=LOG2E, out=work[1, :n]).exp2_().sub_(p)  # |g| * (q - p_t)
    torch.mul(q, grad_loss.sign().unsqueeze(-1), out=out)  # g * (q - p_t), rounded once into the logits' dtype


# ---- baselines: elementwise terms over fp32 log-probabilities [n, v]; the loss is their sum over v ----------------


def _log_mix(log_a: torch.Tensor, log_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(weight_a * a + (1 - weight_a) * b), stable in log space (weight_a in [0, 1))."""
    if weight_a == 0.0:
        return log_b
    return torch.logaddexp(log_a + math.log(weight_a), log_b + math.log1p(-weight_a))


def rkl_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(q || p): q (log q - log p)."""
    return log_q.exp() * (log_q - log_p)


def tvd_terms(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Total variation: 0.5 |p - q|."""
    return 0.5 * (log_p.exp() - log_q.exp()).abs()


def skew_fkl_terms(log_p: torch.Tensor, log_q: torch.Tensor, skew: float) -> torch.Tensor:
    """KL(p || skew p + (1 - skew) q): p (log p - log m)."""
    return log_p.exp() * (log_p - _log_mix(log_p, log_q, skew))


def skew_rkl_terms(log_p: torch.Tensor, log_q: torch.Tensor, skew: float) -> torch.Tensor:
    """KL(q || skew q + (1 - skew) p): q (log q - log m)."""
    return log_q.exp() * (log_q - _log_mix(log_q, log_p, skew))


def js_terms(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    """beta KL(p || m) + (1 - beta) KL(q || m), m = beta p + (1 - beta) q."""
    log_m = _log_mix(log_p, log_q, beta)
    return beta * log_p.exp() * (log_p - log_m) + (1.0 - beta) * log_q.exp() * (log_q - log_m)
