"""Vocab-parallel distillation losses: the fused TAID loss and the baselines it is compared against.

Conventions shared by every loss here (megatron layout):
  * `student_logits`, `teacher_logits`: [..., V_local] (e.g. [seq, batch, V/tp]), same shape and dtype (fp32,
    bf16 or fp16). Rank r of `group` holds global columns r*V_local .. (r+1)*V_local - 1 of both.
  * `vocab_size`: the true vocabulary. Global columns >= vocab_size are padding: they are sliced off before any
    softmax, so whatever they hold (even inf/nan) is ignored, and their gradient is zero. None: no padding.
  * `group`: the tensor-parallel process group; None means no tensor parallelism (no collectives).
  * Result: the per-token loss, fp32, shaped like the logits without the last dim, identical on every rank of
    `group`. Each rank back-propagates its own copy (as megatron's vocab_parallel_cross_entropy): the gradient it
    receives is for its own vocabulary slice, in the logits' dtype. The teacher never receives a gradient.
  * No temperature; all statistics in fp32. Logits in the true vocabulary must be finite (padding may hold anything).
    (The baselines in `akl.py`, `ctkd.py` and `dkd.py` follow the same conventions; ctkd and dkd have temperatures.)

Every loss is also in `taidtron.losses.registry.LOSSES` under one uniform signature (`registry.py`).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable

import torch
import torch.distributed
from torch.utils.checkpoint import checkpoint

from taidtron.losses import _math

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Default chunk size, in logits per chunk (chunk_tokens = this // V_local). CPU: 2**20 (4 MiB per fp32 buffer)
# keeps the chunk's two buffers near the caches, the best setting in the benchmark of docs/losses.md. GPU: 2**26
# (256 MiB per buffer) keeps the number of kernel launches small while the temporaries stay far below the
# gradient. Set chunk_tokens to override.
_CHUNK_ELEMENTS = {"cpu": 1 << 20}
_CHUNK_ELEMENTS_ACCELERATOR = 1 << 26


# ---- argument handling --------------------------------------------------------------------------------------------


def _check_inputs(student: torch.Tensor, teacher: torch.Tensor, vocab_size: int | None, group, chunk_tokens):
    """Validate the shared arguments; return (rank, world_size, valid local columns, chunk tokens)."""
    if not isinstance(student, torch.Tensor) or not isinstance(teacher, torch.Tensor):
        raise ValueError("student_logits and teacher_logits must be torch.Tensors.")
    if student.shape != teacher.shape:
        raise ValueError(
            f"student_logits {tuple(student.shape)} and teacher_logits {tuple(teacher.shape)} must have the same "
            "shape: shard both models' output layers identically (pad both vocabularies to one common size)."
        )
    if student.dtype != teacher.dtype:
        raise ValueError(
            f"student_logits ({student.dtype}) and teacher_logits ({teacher.dtype}) must have the same dtype; "
            "cast the teacher's logits to the student's dtype."
        )
    if student.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"logits dtype {student.dtype} is not supported; use float32, bfloat16 or float16.")
    if student.device != teacher.device:
        raise ValueError(f"student_logits on {student.device} but teacher_logits on {teacher.device}.")
    if student.dim() < 1 or student.shape[-1] < 1:
        raise ValueError(f"logits need a non-empty last (vocabulary) dimension, got shape {tuple(student.shape)}.")
    local_vocab = student.shape[-1]
    if group is None:
        rank, world = 0, 1
    else:
        rank, world = torch.distributed.get_rank(group), torch.distributed.get_world_size(group)
    padded = local_vocab * world
    if vocab_size is None:
        vocab_size = padded
    if not isinstance(vocab_size, int) or not 1 <= vocab_size <= padded:
        raise ValueError(
            f"vocab_size={vocab_size!r} must be an int in [1, {padded}] (= {local_vocab} local columns x {world} "
            "tensor-parallel ranks); pass the tokenizer's true vocabulary size."
        )
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(local_vocab, student.device.type)
    elif not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens={chunk_tokens!r} must be a positive int (or None for automatic).")
    return rank, world, _math.valid_columns(vocab_size, local_vocab, rank), chunk_tokens


def default_chunk_tokens(local_vocab: int, device_type: str) -> int:
    """Tokens per chunk when the caller gives none: about 2**20 logits on CPU, 2**26 on an accelerator."""
    return max(1, _CHUNK_ELEMENTS.get(device_type, _CHUNK_ELEMENTS_ACCELERATOR) // local_vocab)


def _check_t(t) -> float:
    if isinstance(t, torch.Tensor):
        if t.numel() != 1:
            raise ValueError(f"t must be a scalar, got a tensor of shape {tuple(t.shape)}.")
        t = t.item()
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"t must be a float in [0, 1], got {t!r}.") from None
    if not 0.0 <= t <= 1.0:  # also rejects nan
        raise ValueError(f"t={t} is outside [0, 1]; take it from TAIDSchedule.t.")
    return t


def _chunks(n_tokens: int, chunk_tokens: int):
    for start in range(0, n_tokens, chunk_tokens):
        yield slice(start, min(start + chunk_tokens, n_tokens))


# ---- implementation choice: Triton kernels or the torch chunk loops -----------------------------------------------

IMPLS = ("auto", "triton", "torch")


@functools.cache
def _triton_kernels():
    """The Triton kernel module, imported on first use (TRITON_INTERPRET is read when its kernels are defined).

    Returns the module, or an ImportError instance describing why Triton is unusable (cached either way)."""
    try:
        from taidtron.losses import triton_taid
    except ImportError as exc:  # Triton missing, or an install whose import fails
        return exc
    return triton_taid


def _resolve_impl(impl, device: torch.device) -> str:
    """ "triton" or "torch" for a call on `device`; ValueError naming the fix when `impl` cannot run there.

    auto: Triton on CUDA tensors when it imports (the torch path otherwise, with a warning on CUDA);
    triton: always (CPU tensors only under TRITON_INTERPRET=1, Triton's interpreter); torch: the chunk loops.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is unknown; choose one of {', '.join(IMPLS)}.")
    if impl == "torch" or (impl == "auto" and device.type != "cuda"):
        return "torch"
    kernels = _triton_kernels()
    if isinstance(kernels, ImportError):
        if impl == "auto":
            warnings.warn(
                f"Triton is not importable ({kernels}); the fused TAID loss uses its torch path "
                "(pip install 'taidtron[triton]' for the kernel).",
                RuntimeWarning,
                stacklevel=4,
            )
            return "torch"
        raise ValueError(
            f"impl='triton' needs Triton, which does not import here ({kernels}); install it with "
            "pip install 'taidtron[triton]', or pass impl='torch'."
        )
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(
            f"impl='triton' got {device.type} tensors: Triton runs on CUDA devices, or on CPU only in "
            "its interpreter (set TRITON_INTERPRET=1 before the first call); pass impl='torch' here."
        )
    return "triton"


def _torch_taid_stats(student, teacher, t, n_valid, chunk_tokens, with_entropy):
    """Local maxima [N, 2] and sums [N, 3 or 4] of every token, chunk by chunk (`_math.taid_chunk_stats`)."""
    n_tokens = student.shape[0]
    maxes = torch.full((n_tokens, 2), -math.inf, dtype=torch.float32, device=student.device)
    sums = torch.zeros((n_tokens, 4 if with_entropy else 3), dtype=torch.float32, device=student.device)
    if n_valid > 0 and n_tokens > 0:  # a rank whose slice is all padding gives -inf maxima and zero sums
        work = _math.new_workspace(with_entropy, min(chunk_tokens, n_tokens), n_valid, student.device)
        for rows in _chunks(n_tokens, chunk_tokens):
            maxes[rows], sums[rows] = _math.taid_chunk_stats(
                student[rows, :n_valid], teacher[rows, :n_valid], t, with_entropy, work
            )
        del work
    return maxes, sums


# ---- the fused TAID loss ------------------------------------------------------------------------------------------


class _VocabParallelTAIDLoss(torch.autograd.Function):
    """-sum_v p_t(v) log q(v) per token, vocabulary sharded over `group`; gradient q - p_t w.r.t. the student.

    Shapes: student, teacher [N, V_local] (N tokens, any float dtype, same for both); output [N] fp32.
    Forward: one pass over the logits in chunks of `chunk_tokens` tokens, each giving local maxima [n, 2] and
    local sums [n, 3] (Z_z, Z_s, A) relative to them (`_math.taid_chunk_stats`). Then
        collective 1: all_reduce(MAX) of maxes [N, 2] (m_z, m_s)
        (local sums rescaled to the global maxima, `_math.rescale_partial_stats`)
        collective 2: all_reduce(SUM) of sums [N, 3] ([N, 4] with the entropy term for the KL variant)
    Saved for backward: the two logits tensors (references, no copy) and lse [N, 2] fp32 (log-partitions of z and
    s, base 2). No [N, V] temporary is kept.
    Backward: zero collectives. Per chunk, grad = (exp(s - lse_s) - exp(z - lse_z)) * g recomputed from the
    saved statistics (`_math.taid_chunk_grad`), written straight into the [N, V_local] gradient (logits' dtype);
    padding columns get zeros. The upstream gradient's magnitude is folded into the exponent and its sign applied
    by the pass that writes the gradient, so the backward reads nothing back to the host.
    Extra memory: O(N) statistics plus two fp32 [chunk_tokens, V_local] temporaries, plus the gradient.
    impl="triton": the chunk loops are replaced by one Triton kernel each (`triton_taid.taid_stats`,
    `triton_taid.taid_grad`): the same sums, relative to references at most 8 (base 2) below the local maxima,
    which the MAX all-reduce combines like maxima; the same collectives; the backward multiplies by g and the only
    extra memory is the gradient.
    """

    @staticmethod
    def forward(ctx, student, teacher, t, n_valid, group, chunk_tokens, with_entropy, impl):
        if impl == "triton":
            maxes, sums = _triton_kernels().taid_stats(student, teacher, t, n_valid, with_entropy)
        else:
            maxes, sums = _torch_taid_stats(student, teacher, t, n_valid, chunk_tokens, with_entropy)
        if group is not None:
            local_max = maxes.clone()
            torch.distributed.all_reduce(maxes, op=torch.distributed.ReduceOp.MAX, group=group)
            if n_valid > 0:
                sums = _math.rescale_partial_stats(local_max, maxes, sums)
            torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM, group=group)
        loss, lse = _math.taid_finalize(maxes, sums)
        ctx.save_for_backward(student, teacher, lse)
        ctx.t, ctx.n_valid, ctx.chunk_tokens, ctx.impl = t, n_valid, chunk_tokens, impl
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None, None, None, None
        student, teacher, lse = ctx.saved_tensors
        n_valid = ctx.n_valid
        if ctx.impl == "triton":
            grad = _triton_kernels().taid_grad(student, teacher, ctx.t, n_valid, lse, grad_loss)
            return grad, None, None, None, None, None, None, None
        grad = torch.empty_like(student)  # [N, V_local], the logits' dtype
        if n_valid < student.shape[1]:
            grad[:, n_valid:].zero_()  # padding columns take no part in the softmax
        n_tokens = student.shape[0]
        g = grad_loss.reshape(-1).float()
        if n_valid > 0 and n_tokens > 0:
            work = _math.new_workspace(False, min(ctx.chunk_tokens, n_tokens), n_valid, student.device)
            for rows in _chunks(n_tokens, ctx.chunk_tokens):
                _math.taid_chunk_grad(
                    student[rows, :n_valid],
                    teacher[rows, :n_valid],
                    ctx.t,
                    lse[rows],
                    g[rows],
                    grad[rows, :n_valid],
                    work,
                )
            del work
        return grad, None, None, None, None, None, None, None


def _fused_taid(student_logits, teacher_logits, t, vocab_size, group, chunk_tokens, with_entropy, impl):
    _, _, n_valid, chunk_tokens = _check_inputs(student_logits, teacher_logits, vocab_size, group, chunk_tokens)
    impl = _resolve_impl(impl, student_logits.device)
    lead, local_vocab = student_logits.shape[:-1], student_logits.shape[-1]
    loss = _VocabParallelTAIDLoss.apply(
        student_logits.reshape(-1, local_vocab),
        teacher_logits.detach().reshape(-1, local_vocab),
        t,
        n_valid,
        group,
        chunk_tokens,
        with_entropy,
        impl,
    )
    return loss.view(lead)


def vocab_parallel_taid_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    t: float,
    *,
    vocab_size: int | None = None,
    group: torch.distributed.ProcessGroup | None = None,
    chunk_tokens: int | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """TAID loss per token: -sum_v p_t(v) log q(v), p_t = softmax((1-t) stopgrad(s) + t T), q = softmax(s).

    Args:
        student_logits: [..., V_local], e.g. [seq, batch, V/tp]; fp32, bf16 or fp16. Receives the gradient
            (q - p_t) * upstream, in its own dtype.
        teacher_logits: same shape and dtype; never receives a gradient.
        t: interpolation in [0, 1] (TAIDSchedule.t). t=1 gives the cross-entropy from the teacher.
        vocab_size: true vocabulary (global columns >= vocab_size are padding). None: no padding.
        group: tensor-parallel process group; None for no tensor parallelism.
        chunk_tokens: tokens per chunk (bounds the fp32 temporaries to 2 x chunk_tokens x V_local).
            None: about 2**20 logits per chunk on CPU, 2**26 on a GPU. Torch path only.
        impl: "auto" (Triton kernels on CUDA tensors when Triton imports, else the torch path), "triton" (CPU
            tensors only under TRITON_INTERPRET=1) or "torch" (chunked eager torch ops).
    Returns:
        fp32 [...] per-token loss, the same on every rank of `group`.
    Collectives: forward one MAX all-reduce of [tokens, 2] and one SUM all-reduce of [tokens, 3]; backward none.
    """
    return _fused_taid(student_logits, teacher_logits, _check_t(t), vocab_size, group, chunk_tokens, False, impl)


def vocab_parallel_fkl_loss(
    student_logits, teacher_logits, *, vocab_size=None, group=None, chunk_tokens=None, impl="auto"
):
    """Forward KL(p_T || q) per token: the fused TAID kernel at t=1 minus the teacher's entropy (no gradient).

    Same conventions, collectives and `impl` choice as `vocab_parallel_taid_loss` (the SUM all-reduce is
    [tokens, 4]).
    """
    return _fused_taid(student_logits, teacher_logits, 1.0, vocab_size, group, chunk_tokens, True, impl)


# ---- baselines: autograd through a vocab-parallel log-softmax -----------------------------------------------------


class _VocabParallelLogSumExpPair(torch.autograd.Function):
    """log sum_v exp(.) of the student and of the teacher over the vocabulary sharded on `group`, in one go.

    student: [n, v] fp32 valid columns (v may be 0); teacher: [n, v] any float dtype. Returns (lse_s, lse_T),
    [n] fp32 each; lse_T is not differentiable.
    Forward: one MAX all-reduce of [n, 2] and one SUM all-reduce of [n, 2]. Backward: one SUM all-reduce [n] of
    the incoming gradient (each rank uses lse_s only in its own vocabulary terms, so the total derivative is the
    sum over ranks), then grad_s = exp(s - lse_s) * g locally. Saves the student chunk (reference) and lse_s.
    """

    @staticmethod
    def forward(ctx, student, teacher, group):
        n, v = student.shape
        if v > 0:
            m = torch.stack([student.amax(dim=-1), teacher.amax(dim=-1).float()], dim=-1)  # [n, 2]
        else:
            m = torch.full((n, 2), -math.inf, dtype=torch.float32, device=student.device)
        if group is not None:
            torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.MAX, group=group)
        if v > 0:
            sumexp = torch.stack(
                [torch.sub(x, m[:, i : i + 1]).exp_().sum(dim=-1) for i, x in enumerate((student, teacher))], dim=-1
            )
        else:
            sumexp = torch.zeros_like(m)
        if group is not None:
            torch.distributed.all_reduce(sumexp, op=torch.distributed.ReduceOp.SUM, group=group)
        lse = m + sumexp.log()  # [n, 2]
        lse_s, lse_t = lse[:, 0].contiguous(), lse[:, 1].contiguous()
        ctx.save_for_backward(student, lse_s)
        ctx.group = group
        ctx.mark_non_differentiable(lse_t)
        return lse_s, lse_t

    @staticmethod
    def backward(ctx, grad_lse_s, grad_lse_t):
        student, lse_s = ctx.saved_tensors
        g = grad_lse_s.float().clone()
        if ctx.group is not None:
            torch.distributed.all_reduce(g, op=torch.distributed.ReduceOp.SUM, group=ctx.group)
        return torch.sub(student, lse_s.unsqueeze(-1)).exp_().mul_(g.unsqueeze(-1)), None, None


class _SumOverVocabShards(torch.autograd.Function):
    """All-reduce(SUM) of per-rank partial losses [n]; the result is replicated, so the backward is the identity."""

    @staticmethod
    def forward(ctx, partial, group):
        out = partial.clone()
        if group is not None:
            torch.distributed.all_reduce(out, op=torch.distributed.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _divergence_chunk(student, teacher, group, terms, options):
    """Per-token divergence of one chunk: fp32 log-softmaxes over the sharded vocabulary, then sum over ranks."""
    student = student.float()  # one cast, so all gradient paths add up in fp32 and round to the logits' dtype once
    lse_s, lse_t = _VocabParallelLogSumExpPair.apply(student, teacher, group)
    log_q = student - lse_s.unsqueeze(-1)  # [n, v] fp32, differentiable
    log_p = teacher.float() - lse_t.unsqueeze(-1)  # [n, v] fp32, constant
    return _SumOverVocabShards.apply(terms(log_p, log_q, **options).sum(dim=-1), group)


def vocab_parallel_chunks(
    student_logits,
    teacher_logits,
    vocab_size,
    group,
    chunk_tokens,
    chunk_loss: Callable,
    prepare: Callable | None = None,
) -> torch.Tensor:
    """Per-token `chunk_loss(student_chunk, teacher_chunk, *prepare(teacher_chunk))` over chunks of tokens, on this
    rank's valid (non-padding) columns; the losses that autograd differentiates (the baselines) run on it.

    With gradients on, each chunk runs under activation checkpointing, so only the logits are kept between forward
    and backward and the fp32 temporaries are bounded by one chunk (recomputed in the backward). `prepare` (optional)
    runs once per chunk outside the checkpoint, without gradients, so what it computes from the teacher (AKL's
    head/tail split) and its collectives are not repeated by the backward's recompute.
    """
    _, _, n_valid, chunk_tokens = _check_inputs(student_logits, teacher_logits, vocab_size, group, chunk_tokens)
    lead, local_vocab = student_logits.shape[:-1], student_logits.shape[-1]
    student = student_logits.reshape(-1, local_vocab)
    teacher = teacher_logits.detach().reshape(-1, local_vocab)
    if n_valid < local_vocab:  # drop padding columns (only then: a slice's backward allocates a zero-filled copy)
        student, teacher = student[:, :n_valid], teacher[:, :n_valid]
    grad_needed = torch.is_grad_enabled() and student.requires_grad
    losses = []
    for s_chunk, t_chunk in zip(torch.split(student, chunk_tokens), torch.split(teacher, chunk_tokens)):
        if prepare is None:
            extra = ()
        else:
            with torch.no_grad():
                extra = prepare(t_chunk)
        if grad_needed:
            losses.append(checkpoint(chunk_loss, s_chunk, t_chunk, *extra, use_reentrant=False))
        else:
            losses.append(chunk_loss(s_chunk, t_chunk, *extra))
    if not losses:  # zero tokens
        return student_logits.new_zeros(lead, dtype=torch.float32)
    return torch.cat(losses).view(lead)


def _vocab_parallel_divergence(student_logits, teacher_logits, vocab_size, group, chunk_tokens, terms, **options):
    """Sum over the sharded vocabulary of `terms(log_p_teacher, log_q_student)`, per token, chunked over tokens
    (`vocab_parallel_chunks`). Collectives per chunk: forward 3 all-reduces (MAX [chunk, 2], SUM [chunk, 2] for
    both log-softmaxes, SUM [chunk] of the partial divergences); backward 3 (the recompute's MAX and SUM, and SUM
    [chunk] of the log-sum-exp gradient).
    """
    chunk_loss = functools.partial(_divergence_chunk, group=group, terms=terms, options=options)
    return vocab_parallel_chunks(student_logits, teacher_logits, vocab_size, group, chunk_tokens, chunk_loss)


def _check_weight(name: str, value: float, low_open: bool) -> float:
    value = float(value)
    ok = (0.0 < value < 1.0) if low_open else (0.0 <= value < 1.0)
    if not ok:
        raise ValueError(f"{name}={value} must be in {'(0, 1)' if low_open else '[0, 1)'}.")
    return value


def vocab_parallel_rkl_loss(student_logits, teacher_logits, *, vocab_size=None, group=None, chunk_tokens=None):
    """Reverse KL(q || p_T) per token (vocab-parallel; conventions in the module docstring)."""
    return _vocab_parallel_divergence(student_logits, teacher_logits, vocab_size, group, chunk_tokens, _math.rkl_terms)


def vocab_parallel_tvd_loss(student_logits, teacher_logits, *, vocab_size=None, group=None, chunk_tokens=None):
    """Total variation distance 0.5 * sum_v |p_T - q| per token."""
    return _vocab_parallel_divergence(student_logits, teacher_logits, vocab_size, group, chunk_tokens, _math.tvd_terms)


def vocab_parallel_skew_fkl_loss(
    student_logits, teacher_logits, *, skew=0.1, vocab_size=None, group=None, chunk_tokens=None
):
    """Skew forward KL(p_T || skew p_T + (1 - skew) q) per token (DistiLLM; skew in [0, 1), 0 gives forward KL)."""
    skew = _check_weight("skew", skew, low_open=False)
    return _vocab_parallel_divergence(
        student_logits, teacher_logits, vocab_size, group, chunk_tokens, _math.skew_fkl_terms, skew=skew
    )


def vocab_parallel_skew_rkl_loss(
    student_logits, teacher_logits, *, skew=0.1, vocab_size=None, group=None, chunk_tokens=None
):
    """Skew reverse KL(q || skew q + (1 - skew) p_T) per token (DistiLLM; skew in [0, 1), 0 gives reverse KL)."""
    skew = _check_weight("skew", skew, low_open=False)
    return _vocab_parallel_divergence(
        student_logits, teacher_logits, vocab_size, group, chunk_tokens, _math.skew_rkl_terms, skew=skew
    )


def vocab_parallel_js_loss(student_logits, teacher_logits, *, beta=0.1, vocab_size=None, group=None, chunk_tokens=None):
    """Generalized Jensen-Shannon: beta KL(p_T || m) + (1 - beta) KL(q || m), m = beta p_T + (1 - beta) q;
    beta in (0, 1)."""
    beta = _check_weight("beta", beta, low_open=True)
    return _vocab_parallel_divergence(
        student_logits, teacher_logits, vocab_size, group, chunk_tokens, _math.js_terms, beta=beta
    )
