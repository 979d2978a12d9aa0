"""torchrun worker: `taidtron.evaluate.evaluate` on the test split, and a float64 reference on the same tokens.

    eval_worker.py [section.key=value ...]     (configs/smoke.yaml + the overrides; student.init/teacher.init set)

Every rank reports `result` (what evaluate returned: global means over all data-parallel ranks) and `reference`:
the same means computed on this rank alone over every global batch of the test split, from the models' logits
over the true vocabulary in float64 (log_softmax, no fused kernel).
"""

from __future__ import annotations

import sys

import torch

from taidtron.config import load_config
from taidtron.data import build_test_iterator, load_shared_tokenizer
from taidtron.distributed import destroy_distributed, init_distributed, seed_everything
from taidtron.evaluate import evaluate
from taidtron.trainer import build_trainer
from tests.support import report


def reference(cfg, ctx) -> dict:
    tokenizer = load_shared_tokenizer(cfg.data)
    pair = build_trainer(cfg, ctx, tokenizer.vocab_size).model.module.eval()
    gbs = cfg.parallel.global_batch_size
    batches, num_batches = build_test_iterator(
        cfg.data, tokenizer, micro_batch_size=gbs, global_batch_size=gbs, dp_rank=0, dp_size=1
    )
    sums = dict.fromkeys(
        ("student_lm_loss", "teacher_lm_loss", "kl_teacher_student", "student_entropy", "teacher_entropy"), 0.0
    )
    sums["top1_agreement"] = 0.0
    tokens = 0.0
    with torch.no_grad():
        for _ in range(num_batches):
            batch = next(batches)
            student, teacher = pair(batch["tokens"], batch["position_ids"])  # [b, s, V_padded] each
            log_q = torch.log_softmax(student[..., : tokenizer.vocab_size].double(), -1)
            log_p = torch.log_softmax(teacher[..., : tokenizer.vocab_size].double(), -1)
            labels, mask = batch["labels"].unsqueeze(-1), batch["loss_mask"].double()
            sums["student_lm_loss"] += float((-log_q.gather(-1, labels).squeeze(-1) * mask).sum())
            sums["teacher_lm_loss"] += float((-log_p.gather(-1, labels).squeeze(-1) * mask).sum())
            sums["kl_teacher_student"] += float(((log_p.exp() * (log_p - log_q)).sum(-1) * mask).sum())
            sums["student_entropy"] += float((-(log_q.exp() * log_q).sum(-1) * mask).sum())
            sums["teacher_entropy"] += float((-(log_p.exp() * log_p).sum(-1) * mask).sum())
            same = log_q.argmax(-1) == log_p.argmax(-1)
            sums["top1_agreement"] += float((same.double() * mask).sum())
            tokens += float(mask.sum())
    return {**{k: v / tokens for k, v in sums.items()}, "batches": num_batches, "tokens": tokens}


def main() -> None:
    cfg = load_config("configs/smoke.yaml", sys.argv[1:])
    ctx = init_distributed(cfg.parallel)
    try:
        seed_everything(cfg.seed, ctx)
        report(result=evaluate(cfg, ctx, split="test"), reference=reference(cfg, ctx), dp=ctx.dp)
    finally:
        destroy_distributed()


if __name__ == "__main__":
    main()
