"""Next-token cross-entropy on vocab-parallel logits: the LM objective (teacher pretraining, the no-teacher floor,
the optional `taid.lm_loss_weight` term) and the validation LM loss of both models.

Same conventions as `taidtron.losses.vocab_parallel`: logits [..., V_local] (fp32, bf16 or fp16), rank r of `group`
holds global columns r*V_local .. (r+1)*V_local - 1; global columns >= `vocab_size` are padding and never enter the
softmax (whatever they hold); statistics in fp32; the result is identical on every rank of `group`.
"""

from __future__ import annotations

import math

import torch
import torch.distributed

from taidtron.losses._math import valid_columns
from taidtron.losses.vocab_parallel import _FLOAT_DTYPES, _chunks, default_chunk_tokens


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """-log softmax(s)[label] per token, vocabulary sharded over `group`.

    Shapes: logits [N, V_local], labels [N] int64 (global ids), output [N] fp32.
    Forward, per chunk of tokens: local max m, Z = sum exp(s - m) over valid columns, and the label's logit when this
    rank holds it (else 0). Then collective 1: all_reduce(MAX) of m [N]; local Z rescaled to the global max;
    collective 2: all_reduce(SUM) of [N, 2] (Z, label logit). loss = m + log Z - s[label].
    Saved for backward: the logits (reference), the labels and lse [N] fp32. Backward: zero collectives,
    grad = (softmax(s) - onehot(label)) * g per chunk, written into a [N, V_local] tensor in the logits' dtype;
    padding columns get zeros. Extra memory: one fp32 [chunk, V_local] temporary plus the gradient.
    """

    @staticmethod
    def forward(ctx, logits, labels, first_column, n_valid, group, chunk_tokens):
        n_tokens = logits.shape[0]
        maxes = torch.full((n_tokens,), -math.inf, dtype=torch.float32, device=logits.device)
        sums = torch.zeros((n_tokens, 2), dtype=torch.float32, device=logits.device)  # (Z, label logit)
        local = labels - first_column  # [N], the label's column on this rank when 0 <= local < n_valid
        owned = (local >= 0) & (local < n_valid)
        if n_valid > 0:
            for rows in _chunks(n_tokens, chunk_tokens):
                chunk = logits[rows, :n_valid]  # [n, v], any float dtype (a max is exact in it)
                maxes[rows] = chunk.amax(dim=-1).float()
                sums[rows, 0] = torch.sub(chunk, maxes[rows].unsqueeze(-1)).exp_().sum(dim=-1)  # fp32
            picked = logits[:, :n_valid].gather(-1, local.clamp(0, n_valid - 1).unsqueeze(-1)).squeeze(-1).float()
            sums[:, 1] = torch.where(owned, picked, 0.0)
        if group is not None:
            local_max = maxes.clone()
            torch.distributed.all_reduce(maxes, op=torch.distributed.ReduceOp.MAX, group=group)
            if n_valid > 0:
                sums[:, 0] *= torch.exp(local_max - maxes)
            torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM, group=group)
        lse = maxes + sums[:, 0].log()
        ctx.save_for_backward(logits, local, owned, lse)
        ctx.n_valid, ctx.chunk_tokens = n_valid, chunk_tokens
        return lse - sums[:, 1]

    @staticmethod
    def backward(ctx, grad_loss):
        logits, local, owned, lse = ctx.saved_tensors
        n_valid = ctx.n_valid
        g = grad_loss.reshape(-1).float()  # [N]
        grad = torch.zeros_like(logits) if n_valid < logits.shape[1] else torch.empty_like(logits)
        if n_valid > 0:
            for rows in _chunks(logits.shape[0], ctx.chunk_tokens):
                softmax = torch.sub(logits[rows, :n_valid], lse[rows].unsqueeze(-1)).exp_()  # [n, v] fp32
                grad[rows, :n_valid] = softmax.mul_(g[rows].unsqueeze(-1))
            # -g at each label's column on the rank that holds it: a scatter over all tokens (0 where another rank
            # holds the label), so no host read of which tokens those are
            label_grad = torch.where(owned, -g, 0.0).to(grad.dtype).unsqueeze(-1)  # [N, 1]
            grad[:, :n_valid].scatter_add_(-1, local.clamp(0, n_valid - 1).unsqueeze(-1), label_grad)
        return grad, None, None, None, None, None


def vocab_parallel_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    vocab_size: int | None = None,
    group: torch.distributed.ProcessGroup | None = None,
    chunk_tokens: int | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy per token over the true vocabulary, on vocab-parallel logits.

    Args:
        logits: [..., V_local], e.g. [batch, seq, V/tp]; fp32, bf16 or fp16. Receives the gradient
            (softmax - onehot) * upstream, in its own dtype.
        labels: [...] int64 global token ids, each < vocab_size (the tokenizer's ids).
        vocab_size: true vocabulary (global columns >= vocab_size are padding). None: no padding.
        group: tensor-parallel process group; None for no tensor parallelism.
        chunk_tokens: tokens per chunk (bounds the fp32 temporary to chunk_tokens x V_local). None: automatic.
    Returns:
        fp32 [...] per-token loss (nats), the same on every rank of `group`.
    Collectives: forward one MAX all-reduce of [tokens] and one SUM all-reduce of [tokens, 2]; backward none.
    """
    if logits.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"logits dtype {logits.dtype} is not supported; use float32, bfloat16 or float16.")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"labels {tuple(labels.shape)} must have the logits' shape without the vocabulary "
            f"dimension, {tuple(logits.shape[:-1])}."
        )
    local_vocab = logits.shape[-1]
    rank, world = (
        (0, 1) if group is None else (torch.distributed.get_rank(group), torch.distributed.get_world_size(group))
    )
    padded = local_vocab * world
    vocab_size = padded if vocab_size is None else vocab_size
    if not isinstance(vocab_size, int) or not 1 <= vocab_size <= padded:
        raise ValueError(f"vocab_size={vocab_size!r} must be an int in [1, {padded}]; pass the tokenizer's size.")
    if chunk_tokens is None:
        chunk_tokens = default_chunk_tokens(local_vocab, logits.device.type)
    loss = _VocabParallelCrossEntropy.apply(
        logits.reshape(-1, local_vocab),
        labels.reshape(-1).long(),
        rank * local_vocab,
        valid_columns(vocab_size, local_vocab, rank),
        group,
        chunk_tokens,
    )
    return loss.view(labels.shape)
