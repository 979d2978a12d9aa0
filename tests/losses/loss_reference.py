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


def loss_options(name: str, tokens: tuple[int, ...]) -> dict:
    """Keyword arguments of LOSSES[name] for logits whose leading shape is `tokens`: OPTIONS, plus ctkd's learnable
    temperature (away from 1) and dkd's next tokens (it separates the target class)."""
    options = dict(OPTIONS.get(name, {}))
    if name == "ctkd":
        options["temperature"] = torch.tensor(3.7)
    if name == "dkd":
        options["labels"] = torch.randint(0, VOCAB, tokens, generator=torch.Generator().manual_seed(5))
    return options


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


# ---- the official code's other baselines (SakanaAI/TAID src/distil_losses/: adaptive_kl.py, dkd.py, ctkd.py) --------


def akl_head_mask(teacher, vocab: int, mu: float) -> torch.Tensor:
    """[..., vocab] bool: v is in the head when the teacher's mass on tokens with a strictly larger logit is at most
    1 - mu. Written pairwise in float64 (no sort), so ties fall on one side, as taidtron's definition says."""
    T = _valid(teacher, vocab)
    p = torch.softmax(T, dim=-1)
    strictly_above = (T.unsqueeze(-2) > T.unsqueeze(-1)).to(torch.float64)  # [..., v, u]: T_u > T_v
    mass_above = (strictly_above * p.unsqueeze(-2)).sum(-1)
    return mass_above <= 1 - mu


def akl_sorted_head_mask(teacher, vocab: int, mu: float) -> torch.Tensor:
    """The official head mask: ascending sort of the teacher's logits, cumulative softmax >= mu, in *sorted* order
    (float64 here). `scatter_back` of it gives the mask in vocabulary order."""
    sorted_logits, order = torch.sort(_valid(teacher, vocab), descending=False)
    return sorted_logits.softmax(dim=-1).cumsum(dim=-1) >= mu, order


def akl_reference(student, teacher, vocab: int, mu: float = 0.5, grad_loss=None, head=None, literal=False):
    """(loss [...], d sum(loss * grad_loss) / d student [..., padded]): the official AKL formula in float64 autograd:
    weights from the head and tail gaps (not detached), w_head * CE(p, q) + w_tail * KL(q || p).

    head: the head mask in vocabulary order (default `akl_head_mask`). literal=True applies the official sorted-order
    mask to the unsorted gaps, exactly as the official code does."""
    s = _valid(student, vocab).requires_grad_(True)
    T = _valid(teacher, vocab)
    p, q = torch.softmax(T, dim=-1), torch.softmax(s, dim=-1)
    if literal:
        head, _ = akl_sorted_head_mask(teacher, vocab, mu)
    elif head is None:
        head = akl_head_mask(teacher, vocab, mu)
    gap = (p - q).abs()
    head_gap, tail_gap = (head * gap).sum(-1), (~head * gap).sum(-1)
    ce = -(p * torch.log_softmax(s, dim=-1)).sum(-1)
    rkl = (q * (torch.log_softmax(s, dim=-1) - torch.log_softmax(T, dim=-1))).sum(-1)
    loss = (head_gap * ce + tail_gap * rkl) / (head_gap + tail_gap)
    weights = torch.ones_like(loss) if grad_loss is None else grad_loss.to(torch.float64)
    (grad,) = torch.autograd.grad((loss * weights).sum(), s)
    return loss.detach(), _pad(grad, student.shape[-1])


def dkd_reference(student, teacher, labels, vocab: int, alpha=1.0, beta=0.5, temperature=1.0, grad_loss=None):
    """(loss [...], d sum(loss * grad_loss) / d student [..., padded]): the official DKD per token in float64
    autograd (binary target / rest KL, then KL of the non-target softmaxes with the target pushed down by 1000 / tau
    as the official code does), tau^2 (alpha TCKD + beta NCKD); tokens whose label is not in [0, vocab) give 0."""
    s = _valid(student, vocab).requires_grad_(True)
    T = _valid(teacher, vocab)
    valid = (labels >= 0) & (labels < vocab)
    gt = torch.nn.functional.one_hot(torch.where(valid, labels, 0), vocab).bool()
    p, q = torch.softmax(T / temperature, dim=-1), torch.softmax(s / temperature, dim=-1)
    p_bin = torch.stack([(p * gt).sum(-1), (p * ~gt).sum(-1)], dim=-1)
    q_bin = torch.stack([(q * gt).sum(-1), (q * ~gt).sum(-1)], dim=-1)
    tckd = torch.nn.functional.kl_div(q_bin.log(), p_bin, reduction="none").sum(-1)
    p_rest = torch.softmax(T / temperature - 1000.0 * gt, dim=-1)
    log_q_rest = torch.log_softmax(s / temperature - 1000.0 * gt, dim=-1)
    nckd = torch.nn.functional.kl_div(log_q_rest, p_rest, reduction="none").sum(-1)
    loss = torch.where(valid, temperature**2 * (alpha * tckd + beta * nckd), 0.0)
    weights = torch.ones_like(loss) if grad_loss is None else grad_loss.to(torch.float64)
    (grad,) = torch.autograd.grad((loss * weights).sum(), s)
    return loss.detach(), _pad(grad, student.shape[-1])


def ctkd_reference(student, teacher, temperature: float, vocab: int, grad_loss=None):
    """(loss [...], d sum(loss * grad_loss) / d student [..., padded], d sum(loss * grad_loss) / d tau): CTKD's
    distillation term tau^2 KL(softmax(T / tau) || softmax(s / tau)) in float64 autograd (KLDivLoss of the CTKD
    code; the official TAID code's cross-entropy differs by tau^2 times the teacher's tempered entropy)."""
    s = _valid(student, vocab).requires_grad_(True)
    tau = torch.tensor(temperature, dtype=torch.float64, requires_grad=True)
    log_p = torch.log_softmax(_valid(teacher, vocab) / tau, dim=-1)
    log_q = torch.log_softmax(s / tau, dim=-1)
    loss = tau**2 * (log_p.exp() * (log_p - log_q)).sum(-1)
    weights = torch.ones_like(loss) if grad_loss is None else grad_loss.to(torch.float64)
    grad, grad_tau = torch.autograd.grad((loss * weights).sum(), (s, tau))
    return loss.detach(), _pad(grad, student.shape[-1]), grad_tau
