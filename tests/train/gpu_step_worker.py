"""torchrun worker (one process) of tests/train/test_gpu_step.py: one optimizer step of the tiny pair of
step_worker.py, watched for one property.

    gpu_step_worker.py host_syncs     host-device syncs of one warm step (torch.cuda.set_sync_debug_mode) at 2 and
                                      at 4 micro-batches, by source location (CUDA only)
    gpu_step_worker.py inf_gradient   a step whose student gradient holds an inf (a tensor hook on one weight),
                                      then a clean one: what each did to the weights and the skip counter

Reports through `tests.support.report`.
"""

from __future__ import annotations

import collections
import sys
import warnings
from pathlib import Path

import torch

from taidtron.benchmark.batches import synthetic_micro_batches
from taidtron.config import load_config
from taidtron.train import session
from taidtron.trainer import build_trainer
from tests.support import report
from tests.train.step_worker import BASE, VOCAB

MICRO_BATCH = 2


def trainer_for(ctx, micro_batches: int):
    """The tiny pair's trainer at `micro_batches` micro-batches of MICRO_BATCH sequences, and its batches."""
    cfg = load_config(None, [*BASE, f"parallel.global_batch_size={MICRO_BATCH * micro_batches}"])
    return build_trainer(cfg, ctx, VOCAB), synthetic_micro_batches(micro_batches, MICRO_BATCH, 32, VOCAB)


def host_syncs(ctx) -> dict:
    """Syncs of one warm step by location, at 2 and 4 micro-batches: a sync inside the micro-batch loop shows as a
    location whose count grows with the micro-batches."""
    where = {}
    for micro in (2, 4):
        trainer, batches = trainer_for(ctx, micro)
        trainer.train_step(iter(batches))  # warm: lazy allocations, compiled fusions
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.train_step(iter(batches))
            finally:
                torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        where[micro] = dict(collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs))
        trainer.close()
    per_micro_batch = {
        location: (where[4].get(location, 0) - where[2].get(location, 0)) / 2
        for location in set(where[2]) | set(where[4])
        if where[4].get(location, 0) != where[2].get(location, 0)
    }
    return {"syncs": {str(k): v for k, v in where.items()}, "per_micro_batch": per_micro_batch}


def inf_gradient(ctx) -> dict:
    trainer, batches = trainer_for(ctx, 2)
    trainer.train_step(iter(batches))
    params = dict(trainer.student.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    target = next(iter(params))
    handle = params[target].register_hook(lambda grad: torch.full_like(grad, float("inf")))
    try:
        bad = trainer.train_step(iter(batches))
    finally:
        handle.remove()
    trainer.sync_weights()
    changed = [name for name, p in params.items() if not torch.equal(p.detach(), before[name])]
    skipped_after_bad = trainer.skipped_steps
    clean = trainer.train_step(iter(batches))
    trainer.sync_weights()
    return {
        "device": str(ctx.device),
        "bad_step": {"skipped": bad.skipped, "grad_norm": repr(bad.grad_norm), "loss": bad.loss},
        "changed_by_bad_step": changed,
        "skipped_steps_after_bad": skipped_after_bad,
        "clean_step": {"skipped": clean.skipped, "loss": clean.loss, "grad_norm": clean.grad_norm},
        "moved_by_clean_step": sum(not torch.equal(p.detach(), before[name]) for name, p in params.items()),
        "finite_after": all(bool(torch.isfinite(p).all()) for p in params.values()),
    }


def main() -> None:
    (mode,) = sys.argv[1:]
    with session(load_config(None, BASE)) as ctx:
        report(**{mode: {"host_syncs": host_syncs, "inf_gradient": inf_gradient}[mode](ctx)})


if __name__ == "__main__":
    main()
