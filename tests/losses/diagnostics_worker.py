"""torchrun worker for the validation diagnostics (entropy, top-1 agreement) under tensor parallelism (gloo, CPU).

    python -m torch.distributed.run --nproc-per-node N tests/losses/diagnostics_worker.py

Every rank builds the same global logits (junk in the padding columns, exact ties planted across vocabulary shards),
keeps its slice, and checks both diagnostics against the float64 reference of the whole vocabulary, with the true
vocabulary 1003 and, at N = 4, 700 (the last rank then holds only padding); it reports the collectives each made.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from diagnostics_reference import TIED, entropy_reference, plant_ties, top1_reference
from loss_reference import VOCAB, make_logits

from taidtron.losses.diagnostics import vocab_parallel_entropy, vocab_parallel_top1_agreement
from tests.support import report

SEQ, BATCH, CHUNK = 7, 3, 5


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(list(range(world)))
    student, teacher = plant_ties(*make_logits((SEQ, BATCH), "wide", seed=31))
    width = student.shape[-1] // world
    s, t = (x[..., rank * width : (rank + 1) * width].contiguous() for x in (student, teacher))
    for vocab in (VOCAB, 700) if world == 4 else (VOCAB,):
        for logits, local in ((student, s), (teacher, t)):
            got = vocab_parallel_entropy(local, vocab_size=vocab, group=group, chunk_tokens=CHUNK)
            torch.testing.assert_close(got.double(), entropy_reference(logits, vocab), rtol=1e-5, atol=1e-5)
        agree = vocab_parallel_top1_agreement(s, t, vocab_size=vocab, group=group)
        assert torch.equal(agree, top1_reference(student, teacher, vocab)), (vocab, agree)
    assert TIED[0] // width != TIED[1] // width, "the planted ties must straddle two shards"

    calls: list[str] = []
    original = dist.all_reduce

    names = {dist.ReduceOp.MAX: "MAX", dist.ReduceOp.SUM: "SUM", dist.ReduceOp.MIN: "MIN"}

    def counting(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        calls.append(f"{names[op]} {tuple(tensor.shape)}")
        return original(tensor, op=op, group=group, async_op=async_op)

    dist.all_reduce = counting
    try:
        vocab_parallel_entropy(s, vocab_size=VOCAB, group=group, chunk_tokens=CHUNK)
        entropy_calls = list(calls)
        calls.clear()
        vocab_parallel_top1_agreement(s, t, vocab_size=VOCAB, group=group)
    finally:
        dist.all_reduce = original
    report(diagnostics="ok", entropy_collectives=entropy_calls, top1_collectives=calls)


if __name__ == "__main__":
    main()
