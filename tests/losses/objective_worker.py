"""torchrun worker: a few optimizer steps of akl, dkd and ctkd through the real Trainer at the layouts given, on the
fixed synthetic batches of `tests/train/step_worker.py` (labels with masked positions), from its init checkpoints.

    objective_worker.py OUT_DIR STUDENT_INIT TEACHER_INIT JSON     JSON: {layout name: [k=v ...]}

Reports per layout and loss: the loss and gradient-norm curves and, for ctkd, the temperature parameter theta and
its (reduced) gradient after each step, on every rank (every rank must hold the same theta).
"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from taidtron.config import load_config
from taidtron.distributed import destroy_distributed, destroy_model_parallel, init_distributed, seed_everything
from taidtron.trainer import build_trainer
from tests.support import report
from tests.train.step_worker import BASE, STEPS, VOCAB, synthetic_batches

LOSSES = ("akl", "dkd", "ctkd")
# ctkd at full reversal strength from the first step, so every step moves theta
OPTIONS = {"akl": [], "dkd": ["taid.dkd_temperature=2.0"], "ctkd": ["taid.ctkd_ramp_fraction=0"]}


def train(student_init: str, teacher_init: str, loss: str, overrides: list[str]) -> dict:
    init = [f"student.init={student_init}", f"teacher.init={teacher_init}", f"taid.loss={loss}"]
    cfg = load_config(None, BASE + init + OPTIONS[loss] + overrides)
    ctx = init_distributed(cfg.parallel)
    cfg.validate_layout(ctx.world_size)
    seed_everything(cfg.seed, ctx)
    trainer = build_trainer(cfg, ctx, VOCAB)
    batches = synthetic_batches(ctx, cfg.parallel.global_batch_size, cfg.parallel.micro_batch_size, cfg.data.seq_length)
    results = {"loss": [], "grad_norm": [], "theta": [], "theta_grad": []}
    for _ in range(STEPS):
        step = trainer.train_step(batches)
        assert not step.skipped
        results["loss"].append(step.loss)
        results["grad_norm"].append(step.grad_norm)
        if trainer.objective_parameters is not None:
            (theta,) = trainer.objective_parameters.parameters
            results["theta"].append(theta.item())
            results["theta_grad"].append(theta.grad.item())
    trainer.close()
    destroy_model_parallel()
    return results


def main() -> None:
    _, student_init, teacher_init, layouts = sys.argv[1:]
    for name, overrides in json.loads(layouts).items():
        report(**{name: {loss: train(student_init, teacher_init, loss, overrides) for loss in LOSSES}})
    dist.barrier()
    destroy_distributed()


if __name__ == "__main__":
    main()
