"""torchrun worker (2 ranks): saves whose writes run out of space mid-way, on a real small file system.

    disk_full_worker.py FS_DIR FRACTION[,FRACTION...]

Saves step 1 of a small student and its distributed optimizer into FS_DIR/checkpoints, then, for each FRACTION,
fills the file system until FRACTION of one checkpoint is free and saves step 2. The save's own room check is
switched off here, as if the disk had filled after it passed (another job writing, or an estimate short of the
truth): the tensor files then meet the full disk inside megatron-core's writer processes, on whichever rank gets
there first. Reports, per fraction and rank, what the save raised, and whether the directory still holds exactly
step 1 as `latest`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch.distributed as dist

from taidtron import checkpoint, overrides
from taidtron.checkpoint import dcp
from taidtron.config import load_config
from taidtron.distributed import destroy_distributed, init_distributed, seed_everything
from taidtron.trainer import build_trainer
from tests.support import report
from tests.train.step_worker import BASE, VOCAB, synthetic_batches


def fill(fs: Path, leave: int) -> None:
    """Rank 0: one file taking all but `leave` bytes of the file system's free space."""
    filler = fs / "filler"
    filler.unlink(missing_ok=True)
    free = os.statvfs(fs).f_bavail * os.statvfs(fs).f_frsize
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def main() -> None:
    fs, fractions = Path(sys.argv[1]), [float(x) for x in sys.argv[2].split(",")]
    cfg = load_config(None, [*BASE, "parallel.distributed_optimizer=true"])
    ctx = init_distributed(cfg.parallel)
    seed_everything(cfg.seed, ctx)
    trainer = build_trainer(cfg, ctx, VOCAB)
    batches = synthetic_batches(ctx, cfg.parallel.global_batch_size, cfg.parallel.micro_batch_size, cfg.data.seq_length)
    trainer.train_step(batches)
    overrides.prepare_writer()
    trainer.sync_weights()
    meta = checkpoint.CheckpointMeta(
        model=cfg.student,
        padded_vocab_size=trainer.padded_vocab_size,
        source=checkpoint.WeightsSource(kind="training", description="disk full test"),
        trainer=trainer.state_dict(),
    )
    ckpt_dir = fs / "checkpoints"

    def save(step: int) -> None:
        checkpoint.save_checkpoint(
            ckpt_dir, step, model=trainer.student, optimizer=trainer.optimizer, meta=meta, ctx=ctx
        )

    save(1)
    one = sum(f.stat().st_size for f in (ckpt_dir / "iter_0000001").iterdir())
    dcp._check_room = lambda *args, **kwargs: None  # the check passed; the disk fills up after it
    cases = []
    for fraction in fractions:
        if ctx.is_main:
            fill(fs, int(fraction * one))
        dist.barrier()
        try:
            save(2)
            outcome = {"raised": None, "message": "saved"}
        except checkpoint.SaveError as exc:
            outcome = {"raised": "SaveError", "message": str(exc)}
        except BaseException as exc:  # noqa: BLE001 - any other type (a traceback in a run) is the failure tested
            outcome = {"raised": type(exc).__name__, "message": " ".join(str(exc).split())[:400]}
        dist.barrier()
        if ctx.is_main:
            (fs / "filler").unlink()
            outcome["left"] = sorted(p.name for p in ckpt_dir.iterdir())
            outcome["latest"] = (ckpt_dir / "latest").read_text()
        cases.append({"fraction": fraction, **outcome})
    report(checkpoint_bytes=one, cases=cases)
    trainer.close()
    destroy_distributed()


if __name__ == "__main__":
    main()
