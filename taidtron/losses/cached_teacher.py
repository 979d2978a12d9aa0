"""The teacher as stored log-probs: what a teacher cache (`taidtron/cache/`) keeps of the vocab-parallel teacher
logits, and the teacher-logit shard every loss reads back from it.

Every distillation loss here sees the teacher only through softmax(T), which a per-token constant does not change,
so log p_T = T - logsumexp(T) stands in for T: exactly when all of log p_T is stored, approximately when only its K
largest entries and the log of the mass outside them (the tail) are.

Writing, from logits [..., V_local] sharded over the TP group like the losses' (columns >= vocab_size are padding):

    vocab_parallel_top_k(logits, k, vocab_size=V, group=tp)  -> log_probs [N, K] fp32 (descending), ids [N, K] int64
        (global), tail [N] fp32 = log of the mass outside the K. Local top-k on each rank, one all-gather of the
        [N, k] candidates and their ids, a top-K of the [N, k * tp] candidates: O(N k tp), the vocabulary is never
        gathered. The tail is the logsumexp of the entries not chosen, computed from them (log(1 - sum p_K) would
        cancel to nothing when the K entries hold nearly all the mass).
    vocab_parallel_log_probs(logits, vocab_size=V, group=tp) -> this rank's [N, V_valid_local] log p_T (K = V).

Reading: `teacher_logits_from_top_k` builds this rank's [..., V_local] shard: each stored entry at its id, every
other token of the true vocabulary at tail - log(V - K), i.e. the tail's mass spread uniformly over the tokens it
covers. Why uniform: the reconstruction is then a distribution with exactly the stored mass outside the K entries
(TAID's interpolation and the KLs see the right total); it is the maximum-entropy choice given only that mass (the
cache keeps nothing else about the tail's shape); each TP rank builds its shard from per-token scalars, with no
communication; and every log p stays finite, which the reverse, skew and JS divergences need (q log(q / p) is
infinite at p = 0). Its cost is a tail flatter than the teacher's (its entropy is overestimated): the error this
gives, per K, is measured in docs/teacher_cache.md.
"""

from __future__ import annotations

import math

import torch
import torch.distributed

from taidtron.losses._math import valid_columns
from taidtron.losses.vocab_parallel import _chunks, default_chunk_tokens


def _group_coordinates(group) -> tuple[int, int]:
    if group is None:
        return 0, 1
    return torch.distributed.get_rank(group), torch.distributed.get_world_size(group)


def _logsumexp(x: torch.Tensor, group) -> torch.Tensor:
    """log sum exp over the vocabulary sharded on `group`, per row of x [n, v] fp32 (v may be 0, entries may be
    -inf; a row with no finite entry anywhere gives -inf). One MAX and one SUM all-reduce of [n]."""
    n = x.shape[0]
    m = x.amax(dim=-1) if x.shape[1] else torch.full((n,), -math.inf, device=x.device)
    if group is not None:
        torch.distributed.all_reduce(m, op=torch.distributed.ReduceOp.MAX, group=group)
    m_safe = torch.where(torch.isfinite(m), m, 0.0)
    s = torch.sub(x, m_safe.unsqueeze(-1)).exp_().sum(dim=-1) if x.shape[1] else torch.zeros_like(m)
    if group is not None:
        torch.distributed.all_reduce(s, op=torch.distributed.ReduceOp.SUM, group=group)
    return m_safe + s.log()


def _rows(logits: torch.Tensor, vocab_size: int, group) -> tuple[torch.Tensor, int, int, int]:
    """(logits as [N, V_local], this rank, its first global column, its valid columns); checks vocab_size."""
    local_vocab = logits.shape[-1]
    rank, world = _group_coordinates(group)
    if not isinstance(vocab_size, int) or not 1 <= vocab_size <= local_vocab * world:
        raise ValueError(f"vocab_size={vocab_size!r} must be an int in [1, {local_vocab * world}].")
    return logits.reshape(-1, local_vocab), rank, rank * local_vocab, valid_columns(vocab_size, local_vocab, rank)


@torch.no_grad()
def vocab_parallel_log_probs(
    logits: torch.Tensor, *, vocab_size: int, group=None, chunk_tokens: int | None = None
) -> torch.Tensor:
    """log softmax over the true vocabulary of vocab-parallel logits [..., V_local]: this rank's valid columns,
    [N, V_valid_local] fp32 (N = the leading dimensions flattened)."""
    rows, _, _, n_valid = _rows(logits, vocab_size, group)
    out = torch.empty((rows.shape[0], n_valid), dtype=torch.float32, device=logits.device)
    chunk_tokens = chunk_tokens or default_chunk_tokens(rows.shape[1], logits.device.type)
    for chunk in _chunks(rows.shape[0], chunk_tokens):
        x = rows[chunk, :n_valid].float()
        out[chunk] = x.sub_(_logsumexp(x, group).unsqueeze(-1))
    return out


@torch.no_grad()
def vocab_parallel_top_k(
    logits: torch.Tensor, k: int, *, vocab_size: int, group=None, chunk_tokens: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The K most likely tokens of softmax(logits) over the true vocabulary, per token (see the module docstring).

    logits: [..., V_local], rank r of `group` holding global columns r * V_local ...; 1 <= k <= vocab_size.
    Returns (log_probs [N, k] fp32, descending; ids [N, k] int64 global token ids; tail [N] fp32, the log of the
    probability outside the k, -inf when k = vocab_size), identical on every rank of `group`.
    Collectives per chunk of tokens: MAX and SUM all-reduces of [n] for the log-partition, all-gathers of [n, k'] values
    and ids (k' = min(k, V_local)), and MAX and SUM all-reduces of [n] for the tail.
    """
    rows, rank, first, n_valid = _rows(logits, vocab_size, group)
    if not isinstance(k, int) or not 1 <= k <= vocab_size:
        raise ValueError(f"k={k!r} must be an int in [1, vocab_size={vocab_size}].")
    _, world = _group_coordinates(group)
    n_tokens, local_vocab = rows.shape
    k_local = min(k, local_vocab)  # the same on every rank: the all-gather needs one shape
    device = logits.device
    log_probs = torch.empty((n_tokens, k), dtype=torch.float32, device=device)
    ids = torch.empty((n_tokens, k), dtype=torch.int64, device=device)
    tail = torch.empty((n_tokens,), dtype=torch.float32, device=device)
    chunk_tokens = chunk_tokens or default_chunk_tokens(local_vocab, device.type)
    for chunk in _chunks(n_tokens, chunk_tokens):
        x = rows[chunk, :n_valid].float()  # [n, v] fp32, a copy: the tail masks it below
        n = x.shape[0]
        lse = _logsumexp(x, group)
        values = torch.full((n, k_local), -math.inf, device=device)
        columns = torch.full((n, k_local), -1, dtype=torch.int64, device=device)
        taken = min(k_local, n_valid)  # a rank whose slice is mostly padding offers fewer than k_local
        if taken:
            values[:, :taken], local = x.topk(taken, dim=-1)
            columns[:, :taken] = local + first
        if world > 1:
            values = torch.cat(_all_gather(values, group), dim=-1)  # [n, k_local * tp]
            columns = torch.cat(_all_gather(columns, group), dim=-1)
        best, where = values.topk(k, dim=-1)  # sorted, descending
        chosen = columns.gather(-1, where)
        log_probs[chunk] = best - lse.unsqueeze(-1)
        ids[chunk] = chosen
        # The tail: this rank's entries that were not chosen. A spare column takes the chosen ids other ranks hold.
        local_chosen = chosen - first
        owned = (local_chosen >= 0) & (local_chosen < n_valid)
        masked = torch.cat([x, x.new_full((n, 1), -math.inf)], dim=-1)
        masked.scatter_(-1, torch.where(owned, local_chosen, n_valid), -math.inf)
        tail[chunk] = _logsumexp(masked[:, :n_valid], group) - lse
    return log_probs, ids, tail


def _all_gather(tensor: torch.Tensor, group) -> list[torch.Tensor]:
    parts = [torch.empty_like(tensor) for _ in range(torch.distributed.get_world_size(group))]
    torch.distributed.all_gather(parts, tensor.contiguous(), group=group)
    return parts


def teacher_logits_from_top_k(
    log_probs: torch.Tensor,
    ids: torch.Tensor,
    tail: torch.Tensor,
    *,
    vocab_size: int,
    local_vocab: int,
    rank: int,
    dtype: torch.dtype,
) -> torch.Tensor:
    """This TP rank's shard of the reconstructed teacher log-probs, to hand to any loss as its teacher logits.

    log_probs: [..., K] (any float dtype), ids: [..., K] global token ids (< vocab_size), tail: [...] log of the mass
    outside the K (K < vocab_size). Returns [..., local_vocab] in `dtype` (on the inputs' device): column c holds
    global token rank * local_vocab + c: its stored log-prob when it is among the K, else tail - log(vocab_size - K).
    Padding columns (global id >= vocab_size) hold the same value; the losses never read them. The result is a
    view of a [..., local_vocab + 1] buffer (the spare column takes the entries other ranks hold, so the scatter
    needs no host-side selection); its rows have unit column stride, as the losses and kernels need.
    """
    k = log_probs.shape[-1]
    if not 1 <= k < vocab_size:
        raise ValueError(f"top-K reconstruction needs 1 <= K < vocab_size, got K={k}, vocab_size={vocab_size}.")
    uniform = (tail.float() - math.log(vocab_size - k)).to(dtype)  # [...]
    out = uniform.unsqueeze(-1).expand(*tail.shape, local_vocab + 1).contiguous()
    local = ids.long() - rank * local_vocab
    owned = (local >= 0) & (local < local_vocab)
    out.scatter_(-1, torch.where(owned, local, local_vocab), log_probs.to(dtype))
    return out[..., :local_vocab]


def teacher_logits_from_full(log_probs: torch.Tensor, *, local_vocab: int, dtype: torch.dtype) -> torch.Tensor:
    """This TP rank's shard from its slice of a full-vocabulary record: log_probs [..., V_valid_local] (its valid
    columns, in id order) -> [..., local_vocab] in `dtype`; padding columns hold 0 (the losses never read them)."""
    out = torch.zeros((*log_probs.shape[:-1], local_vocab), dtype=dtype, device=log_probs.device)
    out[..., : log_probs.shape[-1]] = log_probs
    return out


def teacher_logits_from_records(
    records: dict[str, torch.Tensor], *, vocab_size: int, local_vocab: int, rank: int, like: torch.Tensor
) -> torch.Tensor:
    """The teacher-logit shard [..., local_vocab] of one micro-batch from its cache records (what
    `taidtron.cache.TeacherCache.attach` adds to a batch: `teacher_log_probs`, and for a top-K cache `teacher_ids`
    and `teacher_tail`), on `like`'s device and in its dtype, ready for the losses beside `like` (the student's
    logits)."""
    log_probs = records["teacher_log_probs"].to(like.device, non_blocking=True)
    if "teacher_ids" not in records:  # full vocabulary: the records hold this rank's columns already
        return teacher_logits_from_full(log_probs, local_vocab=local_vocab, dtype=like.dtype)
    return teacher_logits_from_top_k(
        log_probs,
        records["teacher_ids"].to(like.device, non_blocking=True),
        records["teacher_tail"].to(like.device, non_blocking=True),
        vocab_size=vocab_size,
        local_vocab=local_vocab,
        rank=rank,
        dtype=like.dtype,
    )
