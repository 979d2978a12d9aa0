"""torchrun worker for the tensor-parallel loss tests (gloo, CPU). Run by tests/losses/test_*.py via run_torchrun.

    python -m torch.distributed.run --nproc-per-node N tests/losses/tp_worker.py MODE [torch|triton]

MODE: taid (taid and the baselines of vocab_parallel.py), lm, baselines (akl, ctkd, dkd) or count (collectives).

The optional second argument is the `impl` of the fused losses (taid, fkl); default "auto" (the torch path on CPU).
"triton" needs TRITON_INTERPRET=1 (CPU) and then checks only the fused losses, walking the kernels' vocabulary
tiles 128 columns at a time. Every rank builds the same global logits, keeps its vocabulary slice, checks the loss
and its gradient slice against the float64 reference and against the unsharded (group=None) result, and reports
each passed check through `tests.support.report` (a failed check raises, so the rank exits non-zero).
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from loss_reference import (  # noqa: E402
    OPTIONS,
    REFERENCE_OPTION,
    VOCAB,
    akl_reference,
    ctkd_reference,
    divergence_reference,
    dkd_reference,
    lm_reference,
    make_labels,
    make_logits,
    taid_reference,
    upstream_grad,
)

from taidtron.losses import LOSSES, vocab_parallel_lm_loss, vocab_parallel_taid_loss  # noqa: E402
from tests.support import report  # noqa: E402

SEQ, BATCH, CHUNK = 7, 3, 5
IMPL = sys.argv[2] if len(sys.argv) > 2 else "auto"
FUSED = ("taid", "fkl")  # the losses that take `impl`
OFFICIAL_BASELINES = ("akl", "ctkd", "dkd")  # checked by `check_official` (mode baselines)


def upstream() -> torch.Tensor:
    return upstream_grad(SEQ, BATCH, seed=99)


def shard(x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    width = x.shape[-1] // world
    return x[..., rank * width : (rank + 1) * width].contiguous()


def run_loss(name, student, teacher, *, t, vocab_size, group, g):
    s = student.clone().requires_grad_(True)
    options = dict(OPTIONS.get(name, {}), **({"impl": IMPL} if name in FUSED else {}))
    loss = LOSSES[name](s, teacher, t=t, vocab_size=vocab_size, group=group, chunk_tokens=CHUNK, **options)
    (loss * g.to(loss.dtype)).sum().backward()
    return loss.detach(), s.grad


def check(name, student, teacher, *, t, vocab_size, group, rank, world, tol):
    """Sharded loss/grad == unsharded loss/grad slice == float64 reference (loss, grad slice)."""
    g = upstream()
    loss, grad = run_loss(
        name, shard(student, rank, world), shard(teacher, rank, world), t=t, vocab_size=vocab_size, group=group, g=g
    )
    full_loss, full_grad = run_loss(name, student, teacher, t=t, vocab_size=vocab_size, group=None, g=g)
    if name == "taid":
        ref_loss, ref_grad = taid_reference(student, teacher, t, vocab_size)
        ref_grad = ref_grad * g.unsqueeze(-1)
    else:
        ref_loss, ref_grad = divergence_reference(name, student, teacher, vocab_size, REFERENCE_OPTION.get(name), g)
    ctx = f"{name} t={t} dtype={student.dtype} rank={rank}/{world} vocab={vocab_size}"
    torch.testing.assert_close(loss, full_loss, rtol=tol["same"], atol=tol["same"], msg=lambda m: f"{ctx}: {m}")
    torch.testing.assert_close(
        grad, shard(full_grad, rank, world), rtol=tol["same"], atol=tol["same"], msg=lambda m: f"{ctx}: {m}"
    )
    torch.testing.assert_close(loss.double(), ref_loss, rtol=tol["loss"], atol=tol["loss"], msg=lambda m: f"{ctx}: {m}")
    torch.testing.assert_close(
        grad.double(), shard(ref_grad, rank, world), rtol=tol["grad"], atol=tol["grad"], msg=lambda m: f"{ctx}: {m}"
    )
    padding = grad.new_zeros(grad.shape, dtype=torch.bool)
    width = grad.shape[-1]
    first = rank * width
    padding[..., max(0, vocab_size - first) :] = True
    assert torch.all(grad[padding] == 0), f"{ctx}: non-zero gradient in padding columns"


def check_official(name, student, teacher, labels, *, vocab_size, group, rank, world, tol):
    """akl, ctkd, dkd: sharded == unsharded == float64 reference (loss, gradient slice; ctkd: tau's gradient too,
    identical on every rank), zero gradient in padding columns."""
    g = upstream()
    results = []
    for s, te, grp in ((shard(student, rank, world), shard(teacher, rank, world), group), (student, teacher, None)):
        x = s.clone().requires_grad_(True)
        tau = torch.tensor(2.5, requires_grad=True)
        options = {"akl": {"mu": 0.5}, "ctkd": {"temperature": tau}, "dkd": {"labels": labels, "temperature": 1.5}}
        loss = LOSSES[name](x, te, t=0.4, vocab_size=vocab_size, group=grp, chunk_tokens=CHUNK, **options[name])
        (loss * g.to(loss.dtype)).sum().backward()
        results.append((loss.detach(), x.grad, tau.grad))
    (loss, grad, tau_grad), (full_loss, full_grad, full_tau_grad) = results
    if name == "akl":
        ref_loss, ref_grad = akl_reference(student, teacher, vocab_size, 0.5, g)
    elif name == "ctkd":
        ref_loss, ref_grad, ref_tau_grad = ctkd_reference(student, teacher, 2.5, vocab_size, g)
    else:
        ref_loss, ref_grad = dkd_reference(student, teacher, labels, vocab_size, temperature=1.5, grad_loss=g)
    ctx = f"{name} dtype={student.dtype} rank={rank}/{world} vocab={vocab_size}"
    same = {"rtol": tol["same"], "atol": tol["same"], "msg": lambda m: f"{ctx}: {m}"}
    torch.testing.assert_close(loss, full_loss, **same)
    torch.testing.assert_close(grad, shard(full_grad, rank, world), **same)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=tol["loss"], atol=tol["loss"], msg=same["msg"])
    torch.testing.assert_close(
        grad.double(), shard(ref_grad, rank, world), rtol=tol["grad"], atol=tol["grad"], msg=same["msg"]
    )
    if name == "ctkd":
        all_tau = [torch.zeros(()) for _ in range(dist.get_world_size(group))]
        dist.all_gather(all_tau, tau_grad, group=group)
        assert all(torch.equal(x, tau_grad) for x in all_tau), f"{ctx}: tau's gradient differs across ranks"
        torch.testing.assert_close(tau_grad, full_tau_grad, rtol=1e-4, atol=1e-4, msg=same["msg"])
        torch.testing.assert_close(tau_grad.double(), ref_tau_grad, rtol=1e-3, atol=1e-3, msg=same["msg"])
    first = rank * grad.shape[-1]
    assert torch.all(grad[..., max(0, vocab_size - first) :] == 0), f"{ctx}: non-zero gradient in padding columns"


FP32 = {"same": 2e-5, "loss": 3e-5, "grad": 2e-5}
BF16 = {"same": 2e-2, "loss": 2e-4, "grad": 5e-3}


def main(mode: str) -> None:
    dist.init_process_group("gloo")
    names = FUSED if IMPL == "triton" else tuple(n for n in LOSSES if n not in OFFICIAL_BASELINES)
    if IMPL == "triton":
        from taidtron.losses import triton_taid

        triton_taid.MAX_BLOCK_V, triton_taid.TILE_ELEMENTS = 128, 1024  # several tiles and rows per program
    rank, world = dist.get_rank(), dist.get_world_size()
    group = dist.new_group(list(range(world)))  # an explicit TP group object, not the default one

    if mode == "taid":
        student, teacher = make_logits((SEQ, BATCH), "extreme", seed=21)
        for t in (0.0, 0.4, 0.93, 1.0):
            check("taid", student, teacher, t=t, vocab_size=VOCAB, group=group, rank=rank, world=world, tol=FP32)
        s16, t16 = make_logits((SEQ, BATCH), "wide", seed=22, dtype=torch.bfloat16)
        check("taid", s16, t16, t=0.4, vocab_size=VOCAB, group=group, rank=rank, world=world, tol=BF16)
        for name in names:  # every baseline under TP too
            check(
                name,
                student.div(4),
                teacher.div(4),
                t=0.4,
                vocab_size=VOCAB,
                group=group,
                rank=rank,
                world=world,
                tol=FP32,
            )
        report(taid="ok")

        if world == 4:
            # vocab 700 of 1008 columns: rank 2 holds 196 real columns, rank 3 only padding
            for name in [n for n in ("taid", "fkl", "rkl") if n in names]:
                check(name, student, teacher, t=0.4, vocab_size=700, group=group, rank=rank, world=world, tol=FP32)
            report(all_padding_rank="ok")

            # two TP=2 groups inside a world of 4: ranks use their rank *within* their own group
            pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]
            pair = pairs[rank // 2]
            for name in [n for n in ("taid", "tvd") if n in names]:
                check(name, student, teacher, t=0.93, vocab_size=VOCAB, group=pair, rank=rank % 2, world=2, tol=FP32)
            report(tp2_subgroups="ok")

    elif mode == "baselines":
        student, teacher = make_logits((SEQ, BATCH), "wide", seed=27)
        labels = make_labels((SEQ, BATCH), seed=28)
        labels[1, 1], labels[3, 2] = -100, VOCAB + 2  # ignored tokens
        per_rank = 1008 // world
        labels[0, 0], labels[5, 1] = per_rank - 1, per_rank  # labels at the edges of rank 0's slice
        loose = {"same": 5e-5, "loss": 1e-4, "grad": 2e-5}  # akl, ctkd: nats of a wider scale than taid's check
        for name in OFFICIAL_BASELINES:
            check_official(name, student, teacher, labels, vocab_size=VOCAB, group=group, rank=rank, world=world,
                           tol=loose)  # fmt: skip
            s16, t16 = make_logits((SEQ, BATCH), "wide", seed=29, dtype=torch.bfloat16)
            check_official(name, s16, t16, labels, vocab_size=VOCAB, group=group, rank=rank, world=world, tol=BF16)
        report(baselines="ok")
        if world == 4:  # vocab 700 of 1008 columns: rank 3 holds only padding
            for name in OFFICIAL_BASELINES:
                check_official(name, student, teacher, labels % 700, vocab_size=700, group=group, rank=rank,
                               world=world, tol=loose)  # fmt: skip
            report(all_padding_rank="ok")

    elif mode == "lm":
        logits, _ = make_logits((SEQ, BATCH), "extreme", seed=24)
        labels, g = make_labels((SEQ, BATCH), seed=25), upstream()
        vocab_sizes = (VOCAB, 700) if world == 4 else (VOCAB,)  # 700 of 1008 at tp=4: rank 3 holds only padding
        for vocab_size in vocab_sizes:
            labels = labels % vocab_size
            ref_loss, ref_grad = lm_reference(logits, labels, vocab_size, g)
            for dtype, tol in ((torch.float32, FP32), (torch.bfloat16, BF16)):
                x = shard(logits.to(dtype), rank, world).requires_grad_(True)
                loss = vocab_parallel_lm_loss(x, labels, vocab_size=vocab_size, group=group, chunk_tokens=CHUNK)
                (loss * g.to(loss.dtype)).sum().backward()
                full_ref_loss, full_ref_grad = (
                    (ref_loss, ref_grad)
                    if dtype == torch.float32
                    else lm_reference(logits.to(dtype), labels, vocab_size, g)
                )
                torch.testing.assert_close(loss.double(), full_ref_loss, rtol=tol["loss"], atol=tol["loss"])
                torch.testing.assert_close(
                    x.grad.double(), shard(full_ref_grad, rank, world), rtol=tol["grad"], atol=tol["grad"]
                )
        report(lm="ok")

    elif mode == "count":
        calls: list[str] = []
        original = torch.distributed.all_reduce
        op_names = {dist.ReduceOp.MAX: "MAX", dist.ReduceOp.SUM: "SUM"}

        def counting_all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
            assert group is pair_group, "the loss must reduce over the group it was given"
            calls.append(f"{op_names.get(op, op)} {tuple(tensor.shape)}")
            return original(tensor, op=op, group=group, async_op=async_op)

        pair_group = group
        student, teacher = make_logits((SEQ, BATCH), "wide", seed=23)

        def count(fn):
            s = shard(student, rank, world).requires_grad_(True)
            calls.clear()
            loss = fn(s, shard(teacher, rank, world))
            forward = list(calls)
            calls.clear()
            loss.mean().backward()
            return forward, list(calls)

        torch.distributed.all_reduce = counting_all_reduce
        try:
            forward, backward = count(
                lambda s, te: vocab_parallel_taid_loss(
                    s, te, 0.4, vocab_size=VOCAB, group=group, chunk_tokens=CHUNK, impl=IMPL
                )
            )
            fkl_forward, fkl_backward = count(
                lambda s, te: LOSSES["fkl"](s, te, t=0.4, vocab_size=VOCAB, group=group, chunk_tokens=CHUNK, impl=IMPL)
            )
            rkl_forward, rkl_backward = count(
                lambda s, te: LOSSES["rkl"](s, te, t=0.4, vocab_size=VOCAB, group=group, chunk_tokens=CHUNK)
            )
            labels = make_labels((SEQ, BATCH), seed=26)
            lm_forward, lm_backward = count(
                lambda s, _: vocab_parallel_lm_loss(s, labels, vocab_size=VOCAB, group=group, chunk_tokens=CHUNK)
            )
            options = {
                "akl": {},
                "ctkd": {"temperature": torch.tensor(2.0, requires_grad=True)},
                "dkd": {"labels": labels},
            }
            official = {
                name: count(
                    lambda s, te, name=name: LOSSES[name](
                        s, te, t=0.4, vocab_size=VOCAB, group=group, chunk_tokens=CHUNK, **options[name]
                    )
                )
                for name in OFFICIAL_BASELINES
            }
        finally:
            torch.distributed.all_reduce = original
        report(
            taid_collectives={"forward": forward, "backward": backward},
            fkl_collectives={"forward": fkl_forward, "backward": fkl_backward},
            rkl_collectives={"forward": len(rkl_forward), "backward": len(rkl_backward)},
            lm_collectives={"forward": lm_forward, "backward": lm_backward},
            **{f"{name}_collectives": {"forward": f, "backward": b} for name, (f, b) in official.items()},
        )
    else:
        raise SystemExit(f"unknown mode {mode!r}")

    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
