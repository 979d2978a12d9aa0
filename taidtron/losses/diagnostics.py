"""Validation diagnostics on vocab-parallel logits: the entropy of a model's next-token distribution, and whether
the student's most likely next token is the teacher's (top-1 agreement). The paper's argument is about mode
averaging and mode collapse; these measure both without gathering the vocabulary.

Same conventions as `taidtron.losses.vocab_parallel` (logits [..., V_local]; rank r of `group` holds global columns
r*V_local .. (r+1)*V_local - 1; columns >= `vocab_size` are padding and ignored whatever they hold; statistics in
fp32; the result is identical on every rank of `group`). Forward only: nothing here is differentiated.
"""

from __future__ import annotations

import torch
import torch.distributed

from taidtron.losses.vocab_parallel import _check_inputs, _chunks

_NO_COLUMN = torch.iinfo(torch.int64).max
"""Index a rank without valid columns offers to the MIN all-reduce: never the winner."""


def vocab_parallel_entropy(logits: torch.Tensor, *, vocab_size=None, group=None, chunk_tokens=None) -> torch.Tensor:
    """H(softmax(logits)) per token, in nats: fp32 [...], the logits' shape without the last dim.

    Per chunk of tokens: the local max m, Z = sum exp(s - m) and A = sum exp(s - m) (s - m) over the valid columns;
    then one MAX all-reduce of m [tokens], the local sums moved to the global max, one SUM all-reduce of (Z, A)
    [tokens, 2]; H = log Z - A / Z. Extra memory: two fp32 [chunk, V_local] temporaries.
    """
    _, _, n_valid, chunk_tokens = _check_inputs(logits, logits, vocab_size, group, chunk_tokens)
    lead, local_vocab = logits.shape[:-1], logits.shape[-1]
    flat = logits.detach().reshape(-1, local_vocab)
    n_tokens = flat.shape[0]
    maxes = torch.full((n_tokens,), -torch.inf, dtype=torch.float32, device=logits.device)
    sums = torch.zeros((n_tokens, 2), dtype=torch.float32, device=logits.device)  # (Z, A)
    if n_valid > 0:
        for rows in _chunks(n_tokens, chunk_tokens):
            chunk = flat[rows, :n_valid].float()  # the logits themselves when they are fp32: never written
            maxes[rows] = chunk.amax(dim=-1)
            shifted = chunk - maxes[rows].unsqueeze(-1)
            weights = shifted.exp()
            sums[rows, 0] = weights.sum(dim=-1)
            sums[rows, 1] = (weights * shifted).sum(dim=-1)
    if group is not None:
        local_max = maxes.clone()
        torch.distributed.all_reduce(maxes, op=torch.distributed.ReduceOp.MAX, group=group)
        if n_valid > 0:
            # exp(s - m) = exp(s - m_local) exp(m_local - m) and (s - m) = (s - m_local) + (m_local - m)
            offset = local_max - maxes
            sums[:, 1] = (sums[:, 1] + offset * sums[:, 0]) * offset.exp()
            sums[:, 0] *= offset.exp()
        torch.distributed.all_reduce(sums, op=torch.distributed.ReduceOp.SUM, group=group)
    return (sums[:, 0].log() - sums[:, 1] / sums[:, 0]).view(lead)


def vocab_parallel_top1_agreement(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, vocab_size=None, group=None
) -> torch.Tensor:
    """1.0 where the student's most likely next token is the teacher's, else 0.0: fp32 [...]. Ties go to the lowest
    vocabulary id, as torch.argmax over the whole vocabulary does.

    Per model: the local max and the global id of its first column; one MAX all-reduce of the two maxima
    [tokens, 2], then one MIN all-reduce [tokens, 2] of the ids of the columns that hold them.
    """
    rank, _, n_valid, _ = _check_inputs(student_logits, teacher_logits, vocab_size, group, None)
    local_vocab = student_logits.shape[-1]
    lead = student_logits.shape[:-1]
    both = torch.stack([student_logits.detach(), teacher_logits.detach()], dim=-2).reshape(-1, 2, local_vocab)
    if n_valid > 0:
        values, columns = both[..., :n_valid].float().max(dim=-1)  # [tokens, 2] each; the first maximum on ties
        ids = columns + rank * local_vocab
    else:
        values = torch.full(both.shape[:2], -torch.inf, dtype=torch.float32, device=both.device)
        ids = torch.full(both.shape[:2], _NO_COLUMN, dtype=torch.int64, device=both.device)
    if group is not None:
        best = values.clone()
        torch.distributed.all_reduce(best, op=torch.distributed.ReduceOp.MAX, group=group)
        ids = torch.where(values == best, ids, _NO_COLUMN)
        torch.distributed.all_reduce(ids, op=torch.distributed.ReduceOp.MIN, group=group)
    return (ids[:, 0] == ids[:, 1]).float().view(lead)
