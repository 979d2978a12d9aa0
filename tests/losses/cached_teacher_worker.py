"""torchrun worker of test_cached_teacher.py (gloo, CPU): the teacher-cache side of the losses across TP shards.

    python -m torch.distributed.run --nproc-per-node N tests/losses/cached_teacher_worker.py

Every rank builds the same global logits, keeps its vocabulary slice, and checks against the unsharded (group=None)
computation: the merged top-K (ids exactly, values and tail to fp32 rounding), the log-probs of its slice, the shard
it rebuilds from the top-K records, and every cacheable loss on the rebuilt shards (loss and gradient slice). Vocab
700 of 1008 columns leaves the last ranks of tp=4 with little or no real vocabulary. Reports the checks that passed.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from loss_reference import PADDED_VOCAB, loss_options, make_logits

from taidtron.losses import FROM_LOG_PROBS, LOSSES, vocab_parallel_log_probs, vocab_parallel_top_k
from taidtron.losses.cached_teacher import teacher_logits_from_top_k
from tests.support import report

VOCAB = 700
TOL = {"rtol": 2e-6, "atol": 2e-6}


def shard(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    width = x.shape[-1] // world
    return x[..., rank * width : (rank + 1) * width].contiguous()


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(list(range(world)))
    student, teacher = make_logits((6, 3), "wide", seed=31, vocab=VOCAB)
    local = PADDED_VOCAB // world
    checks = []

    for k in (1, 8, 300, VOCAB - 1):  # 300 > a rank's real columns at tp=4
        got = vocab_parallel_top_k(shard(teacher, rank, world), k, vocab_size=VOCAB, group=group, chunk_tokens=5)
        want = vocab_parallel_top_k(teacher, k, vocab_size=VOCAB)
        assert torch.equal(got[1], want[1]), f"k={k}: ids differ"
        torch.testing.assert_close(got[0], want[0], **TOL)
        torch.testing.assert_close(got[2], want[2], **TOL)
    checks.append("top_k")

    got = vocab_parallel_log_probs(shard(teacher, rank, world), vocab_size=VOCAB, group=group)
    want = vocab_parallel_log_probs(teacher, vocab_size=VOCAB)
    first = rank * local
    torch.testing.assert_close(got, want[:, first : first + got.shape[1]], **TOL)
    checks.append("log_probs")

    records = vocab_parallel_top_k(teacher, 32, vocab_size=VOCAB)
    mine = teacher_logits_from_top_k(*records, vocab_size=VOCAB, local_vocab=local, rank=rank, dtype=torch.float32)
    whole = teacher_logits_from_top_k(*records, vocab_size=VOCAB, local_vocab=PADDED_VOCAB, rank=0, dtype=torch.float32)
    assert torch.equal(mine, shard(whole, rank, world))
    checks.append("shards")

    for name in FROM_LOG_PROBS:
        s_local = shard(student, rank, world).reshape(-1, local).requires_grad_(True)
        options = loss_options(name, (s_local.shape[0],))
        loss = LOSSES[name](s_local, mine, t=0.6, vocab_size=VOCAB, group=group, **options)
        loss.sum().backward()
        s_full = student.reshape(-1, PADDED_VOCAB).clone().requires_grad_(True)
        want_loss = LOSSES[name](s_full, whole, t=0.6, vocab_size=VOCAB, group=None, **options)
        want_loss.sum().backward()
        torch.testing.assert_close(loss, want_loss, rtol=5e-5, atol=5e-5, msg=lambda m, n=name: f"{n}: {m}")
        torch.testing.assert_close(s_local.grad, shard(s_full.grad, rank, world), rtol=5e-5, atol=5e-5)
    checks.append("losses")
    report(checks=checks)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
