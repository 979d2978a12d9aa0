"""Independent float64 references for the loss tests, written straight from the math over the full vocabulary.

Nothing here imports taidtron: every formula is the textbook one (softmax / log_softmax in float64), so the tests
compare our chunked, vocab-parallel, base-2 implementation against an unrelated computation.
Also shared by the torchrun worker (`tp_worker.py`), which imports it as a plain module.
"""

from __future__ import annotations

import torch

VOCAB = 1003  # true vocabulary: not a multiple of 2 or 4
PADDED_VOCAB = 1008  # padded so that TP=2 and TP=4 shard it evenly (504 / 252 columns per rank)
STUDENT_PAD_JUNK = 1.0e4  # would dominate any softmax that forgot the padding mask
TEACHER_PAD_JUNK = 3.0e38  # finite in fp32 and bf16, overflows everything


def make_logits(shape_lead, scale: str, seed: int, vocab=VOCAB, padded=PADDED_VOCAB, dtype=torch.float32):
    """Student and teacher logits [*shape_lead, padded] with junk in the padding columns.

    scale: "unit" (randn), "wide" (randn * 6) or "extreme" (uniform in [-40, 40]).
    """
    gen = torch.Generator().manual_seed(seed)
    shape = (*shape_lead, padded)

    def draw():
        if scale == "unit":
            return torch.randn(shape, generator=gen, dtype=torch.float64)
        if scale == "wide":
            return torch.randn(shape, generator=gen, dtype=torch.float64) * 6
        if scale == "extreme":
            return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * 40
        raise ValueError(scale)

    s, t = draw(), draw()
    s[..., vocab:] = STUDENT_PAD_JUNK
    t[..., vocab:] = TEACHER_PAD_JUNK
    return s.to(dtype), t.to(dtype)


def _valid(x: torch.Tensor, vocab: int) -> torch.Tensor:
    return x.detach().to(torch.float64)[..., :vocab]


def _pad(grad: torch.Tensor, padded: int) -> torch.Tensor:
    out = torch.zeros((*grad.shape[:-1], padded), dtype=torch.float64)
    out[..., : grad.shape[-1]] = grad
    return out


def taid_reference(student, teacher, t: float, vocab: int):
    """(loss [...], d loss / d student [..., padded]) for -sum p_t log q,
    p_t = softmax((1-t) s + t T), q = softmax(s)."""
    s, T = _valid(student, vocab), _valid(teacher, vocab)
    p_t = torch.softmax((1 - t) * s + t * T, dim=-1)
    log_q = torch.log_softmax(s, dim=-1)
    loss = -(p_t * log_q).sum(-1)
    grad = torch.softmax(s, dim=-1) - p_t  # the TAID gradient, per the paper: q - p_t
    return loss, _pad(grad, student.shape[-1])


def _divergence(name: str, p: torch.Tensor, q: torch.Tensor, option: float | None) -> torch.Tensor:
    if name == "fkl":
        return (p * (p.log() - q.log())).sum(-1)
    if name == "rkl":
        return (q * (q.log() - p.log())).sum(-1)
    if name == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if name == "skew_fkl":
        m = option * p + (1 - option) * q
        return (p * (p.log() - m.log())).sum(-1)
    if name == "skew_rkl":
        m = option * q + (1 - option) * p
        return (q * (q.log() - m.log())).sum(-1)
    if name == "js":
        m = option * p + (1 - option) * q
        return option * (p * (p.log() - m.log())).sum(-1) + (1 - option) * (q * (q.log() - m.log())).sum(-1)
    raise ValueError(name)


def divergence_reference(name: str, student, teacher, vocab: int, option: float | None = None, grad_loss=None):
    """(loss [...], d sum(loss * grad_loss) / d student [..., padded]) for a baseline divergence, float64 autograd."""
    s = _valid(student, vocab).requires_grad_(True)
    p = torch.softmax(_valid(teacher, vocab), dim=-1)
    q = torch.softmax(s, dim=-1)
    loss = _divergence(name, p, q, option)
    weights = torch.ones_like(loss) if grad_loss is None else grad_loss.to(torch.float64)
    (grad,) = torch.autograd.grad((loss * weights).sum(), s)
    return loss.detach(), _pad(grad, student.shape[-1])


# Options of the parametrised baselines: as passed to the losses, and the one number the reference takes.
OPTIONS = {"skew_fkl": {"skew": 0.1}, "skew_rkl": {"skew": 0.1}, "js": {"beta": 0.5}}
REFERENCE_OPTION = {"skew_fkl": 0.1, "skew_rkl": 0.1, "js": 0.5}


def upstream_grad(seq: int, batch: int, seed: int) -> torch.Tensor:
    """A [seq, batch] upstream gradient with positive, zero (masked token) and negative entries."""
    g = torch.rand(seq, batch, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.1
    g[0, 0], g[1, 2] = 0.0, -0.7
    return g


def lm_reference(logits, labels, vocab: int, grad_loss=None):
    """(loss [...], d sum(loss * grad_loss) / d logits [..., padded]) for next-token cross-entropy over the true
    vocabulary, float64 autograd: -log_softmax(logits[:vocab])[label]."""
    x = _valid(logits, vocab).requires_grad_(True)
    loss = -torch.log_softmax(x, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    weights = torch.ones_like(loss) if grad_loss is None else grad_loss.to(torch.float64)
    (grad,) = torch.autograd.grad((loss * weights).sum(), x)
    return loss.detach(), _pad(grad, logits.shape[-1])


def make_labels(shape_lead, seed: int, vocab=VOCAB) -> torch.Tensor:
    """Token ids in [0, vocab), including the first and the last id."""
    labels = torch.randint(0, vocab, shape_lead, generator=torch.Generator().manual_seed(seed))
    labels.view(-1)[:2] = torch.tensor([0, vocab - 1])
    return labels
