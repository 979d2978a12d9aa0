"""torchrun worker: a few TAID optimizer steps on fixed synthetic batches at the layout given by overrides.

    step_worker.py OUT_DIR init STUDENT_INIT TEACHER_INIT            (world of 1: write random init checkpoints)
    step_worker.py OUT_DIR train STUDENT_INIT TEACHER_INIT [k=v ...]  (train, save the student, write results)
    step_worker.py OUT_DIR train+optimizer STUDENT_INIT TEACHER_INIT [k=v ...]  (the same, the student saved with its
        optimizer state: in bf16 its fp32 main weights, under optimizer.state.param.*)
    step_worker.py OUT_DIR layouts STUDENT_INIT TEACHER_INIT JSON     (train once per layout of JSON, a
        {name: [k=v ...]} map, one after another on the same ranks: megatron's groups are rebuilt for each, the
        torch.distributed world is kept; results under the layout's name, the student in OUT_DIR/<name>/student)

Every rank checks on its own that the teacher never changes, is in eval mode and has no optimizer state, and that
t is identical on every rank after each step. Every rank reports its loss, t and grad-norm curves through
`tests.support.report`; the student after the steps is saved to OUT_DIR/student (dist checkpoint, comparable across
layouts).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from taidtron import checkpoint
from taidtron.config import load_config
from taidtron.distributed import destroy_distributed, destroy_model_parallel, init_distributed, seed_everything
from taidtron.trainer import Trainer, build_trainer
from tests.support import report

VOCAB = 250  # true vocabulary; both models pad to 256 (128 * tp), so padded columns take part in every test
BASE = [
    "student.num_layers=4",
    "student.hidden_size=64",
    "student.num_attention_heads=4",
    "student.num_query_groups=2",
    "student.ffn_hidden_size=128",
    "student.vocab_size=250",
    "student.tie_embeddings=true",
    "teacher.family=qwen2",
    "teacher.num_layers=4",
    "teacher.hidden_size=96",
    "teacher.num_attention_heads=4",
    "teacher.num_query_groups=2",
    "teacher.ffn_hidden_size=160",
    "teacher.vocab_size=250",
    "data.seq_length=32",
    "parallel.micro_batch_size=2",
    "parallel.global_batch_size=8",
    "optim.lr=1e-2",
    "optim.min_lr=1e-3",
    "optim.warmup_steps=0",
    "optim.train_steps=20",
    "optim.clip_grad=1.0",
    # Adam turns rounding noise in near-zero gradients into full-size updates (g / sqrt(v) ~ sign(g)); a larger
    # eps keeps updates proportional to small gradients, so the weight comparison tests the gradients themselves.
    "optim.adam_eps=1e-3",
    "taid.alpha=0.05",  # large, so the adaptive term (not only the linear floor) moves t within a few steps
]
STEPS = 3


def synthetic_batches(ctx, global_batch: int, micro_batch: int, seq: int, seed: int = 0):
    """The same global batches for every layout; data-parallel rank r takes the r-th contiguous part."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        tokens = torch.randint(0, VOCAB, (global_batch, seq + 1), generator=generator)
        loss_mask = (torch.rand(global_batch, seq, generator=generator) > 0.2).float()  # ignored positions too
        part = slice(ctx.dp_rank * global_batch // ctx.dp, (ctx.dp_rank + 1) * global_batch // ctx.dp)
        tokens, loss_mask = tokens[part], loss_mask[part]
        for start in range(0, tokens.shape[0], micro_batch):
            chunk = tokens[start : start + micro_batch]
            yield {
                "tokens": chunk[:, :-1],
                "labels": chunk[:, 1:],
                "loss_mask": loss_mask[start : start + micro_batch],
                "position_ids": torch.arange(seq).expand(chunk.shape[0], -1),
            }


def weights_meta(cfg, role: str, trainer: Trainer, kind: str) -> checkpoint.CheckpointMeta:
    return checkpoint.CheckpointMeta(
        model=getattr(cfg, role),
        padded_vocab_size=trainer.padded_vocab_size,
        source=checkpoint.WeightsSource(kind=kind, description=f"step_worker {role}"),
    )


def train_layout(
    out_dir: Path, student_init: str, teacher_init: str, overrides: list[str], *, save_optimizer: bool = False
) -> dict:
    """STEPS optimizer steps at the layout `overrides` give, the student saved to out_dir/student; returns this
    rank's world size and loss, t and grad-norm curves."""
    cfg = load_config(None, BASE + [f"student.init={student_init}", f"teacher.init={teacher_init}"] + overrides)
    ctx = init_distributed(cfg.parallel)
    cfg.validate_layout(ctx.world_size)  # both models: the workers distil
    seed_everything(cfg.seed, ctx)
    trainer = build_trainer(cfg, ctx, VOCAB)
    pair = trainer.model.module
    teacher_before = {k: v.detach().clone() for k, v in pair.teacher.state_dict().items() if torch.is_tensor(v)}
    optimizer_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    batches = synthetic_batches(ctx, cfg.parallel.global_batch_size, cfg.parallel.micro_batch_size, cfg.data.seq_length)
    results = {"loss": [], "taid_t": [], "grad_norm": []}
    for _ in range(STEPS):
        step = trainer.train_step(batches)
        t_all = [None] * ctx.world_size
        dist.all_gather_object(t_all, step.taid_t)
        assert len(set(t_all)) == 1, f"t differs across ranks: {t_all}"
        for key in results:
            results[key].append(getattr(step, key))

    teacher_after = {k: v for k, v in pair.teacher.state_dict().items() if torch.is_tensor(v)}
    assert all(torch.equal(teacher_before[k], teacher_after[k]) for k in teacher_before), "teacher weights changed"
    assert not pair.teacher.training, "teacher left eval mode"
    assert not any(p.requires_grad for p in pair.teacher.parameters()), "teacher parameters require grad"
    assert not any(id(p) in optimizer_params for p in pair.teacher.parameters()), "teacher is in the optimizer"
    trainer.sync_weights()
    checkpoint.save_checkpoint(
        out_dir / "student",
        trainer.step,
        model=pair.student,
        optimizer=trainer.optimizer if save_optimizer else None,
        meta=weights_meta(cfg, "student", trainer, "training"),
        ctx=ctx,
    )
    trainer.close()
    return {"world_size": ctx.world_size, **results}


def main() -> None:
    out_dir, mode, student_init, teacher_init, *overrides = sys.argv[1:]
    out_dir = Path(out_dir)
    if mode == "init":
        cfg = load_config(None, BASE + overrides)
        ctx = init_distributed(cfg.parallel)
        assert ctx.world_size == 1
        seed_everything(cfg.seed, ctx)
        trainer = build_trainer(cfg, ctx, VOCAB)
        pair = trainer.model.module
        for role, model, path in (("student", pair.student, student_init), ("teacher", pair.teacher, teacher_init)):
            checkpoint.save_checkpoint(path, 0, model=model, meta=weights_meta(cfg, role, trainer, "init"), ctx=ctx)
        report(initialized=True)
    elif mode in ("train", "train+optimizer"):
        report(**train_layout(out_dir, student_init, teacher_init, overrides, save_optimizer=mode != "train"))
    else:  # layouts: one world, megatron's groups rebuilt per layout (a torchrun start costs more than a run here)
        (layouts,) = overrides
        for name, layout_overrides in json.loads(layouts).items():
            report(**{name: train_layout(out_dir / name, student_init, teacher_init, layout_overrides)})
            destroy_model_parallel()
    destroy_distributed()


if __name__ == "__main__":
    main()
