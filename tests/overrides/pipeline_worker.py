"""torchrun worker (pp=2): one distillation step with every pipeline message recorded at megatron's p2p layer
(`P2PCommunicator._communicate`), reported as shapes per direction, sent and received."""

from __future__ import annotations

from taidtron.config import load_config
from taidtron.distributed import destroy_distributed, init_distributed, seed_everything
from taidtron.trainer import build_trainer
from tests.support import report
from tests.train.step_worker import BASE, VOCAB, synthetic_batches


def main() -> None:
    cfg = load_config(None, [*BASE, "parallel.pp=2"])
    ctx = init_distributed(cfg.parallel)
    seed_everything(cfg.seed, ctx)
    trainer = build_trainer(cfg, ctx, VOCAB)
    communicator = trainer.forward_backward.keywords["p2p_communicator"]
    seen = {"sent_forward": [], "sent_backward": [], "received_forward": [], "received_backward": []}
    communicate = communicator._communicate

    def recording(**kwargs):
        for key, direction in (("tensor_send_next", "sent_forward"), ("tensor_send_prev", "sent_backward")):
            if kwargs.get(key) is not None:
                seen[direction].append(list(kwargs[key].shape))
        from_prev, from_next, reqs = communicate(**kwargs)
        for tensor, direction in ((from_prev, "received_forward"), (from_next, "received_backward")):
            if tensor is not None:
                seen[direction].append(list(tensor.shape))
        return from_prev, from_next, reqs

    communicator._communicate = recording
    step = trainer.train_step(
        synthetic_batches(ctx, cfg.parallel.global_batch_size, cfg.parallel.micro_batch_size, cfg.data.seq_length)
    )
    report(
        pp_rank=ctx.pp_rank,
        loss=step.loss,
        micro_batches=trainer.accumulation_steps,
        student_hidden=cfg.student.hidden_size,
        teacher_hidden=cfg.teacher.hidden_size,
        seq_length=cfg.data.seq_length,
        micro_batch_size=cfg.parallel.micro_batch_size,
        **seen,
    )
    destroy_distributed()


if __name__ == "__main__":
    main()
