"""torchrun worker (dp=2 on CPU, dp=1 on one GPU): the GPU setting, megatron built without its gloo side groups. A
distillation step with the distributed optimizer, then a checkpoint saved and loaded (optimizer state gathered and
scattered over the data-parallel group), must work without them; reports what was built and the world's backend and
bound device."""

from __future__ import annotations

import sys
import tempfile

import torch.distributed as dist
from megatron.core import parallel_state

from taidtron import checkpoint, overrides
from taidtron.config import load_config
from taidtron.distributed import destroy_distributed, init_distributed, seed_everything
from taidtron.trainer import build_trainer
from tests.support import report
from tests.train.step_worker import BASE, VOCAB, synthetic_batches


def main() -> None:
    gloo_groups = {"default": None, "off": False}[sys.argv[1]]
    cfg = load_config(None, [*BASE, "parallel.distributed_optimizer=true"])
    ctx = init_distributed(cfg.parallel, gloo_groups=gloo_groups)
    seed_everything(cfg.seed, ctx)
    try:
        parallel_state.get_data_parallel_group_gloo()
        built = True
    except AssertionError:
        built = False
    trainer = build_trainer(cfg, ctx, VOCAB)
    batches = synthetic_batches(ctx, cfg.parallel.global_batch_size, cfg.parallel.micro_batch_size, cfg.data.seq_length)
    first = trainer.train_step(batches)
    overrides.prepare_writer()
    with tempfile.TemporaryDirectory() as tmp:
        directory = [tmp if ctx.rank == 0 else None]  # one directory for both ranks
        dist.broadcast_object_list(directory, src=0)
        meta = checkpoint.CheckpointMeta(
            model=cfg.student,
            padded_vocab_size=trainer.padded_vocab_size,
            source=checkpoint.WeightsSource(kind="training", description="gloo test"),
            trainer=trainer.state_dict(),
        )
        trainer.sync_weights()
        checkpoint.save_checkpoint(
            directory[0], 1, model=trainer.student, optimizer=trainer.optimizer, meta=meta, ctx=ctx
        )
        second = trainer.train_step(batches)
        checkpoint.load_checkpoint(directory[0], model=trainer.student, optimizer=trainer.optimizer, ctx=ctx)
        again = trainer.train_step(batches)  # the batches move on; the point is that load + step work
        dist.barrier()
    report(
        dp=ctx.dp,
        backend=dist.get_backend(),
        bound_device=str(dist.group.WORLD.bound_device_id),
        gloo_groups=ctx.gloo_groups,
        gloo_dp_group_built=built,
        optimizer_gloo_group=any(
            opt.data_parallel_group_gloo is not None for opt in trainer.optimizer.chained_optimizers
        ),
        losses=[first.loss, second.loss, again.loss],
    )
    destroy_distributed()


if __name__ == "__main__":
    main()
