"""Synthetic micro-batches: random token ids in the trainer's batch format, built once so that every timed variant
of a benchmark (and every step of a GPU test) reads the same ones."""

from __future__ import annotations


def synthetic_micro_batches(num: int, micro_batch: int, seq: int, vocab: int, seed: int = 0) -> list[dict]:
    """`num` micro-batches of `micro_batch` sequences of `seq` tokens drawn from `vocab` ids, every position in the
    loss: the dicts `Trainer.train_step` reads (tokens, labels, loss_mask, position_ids), on the CPU."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(num):
        tokens = torch.randint(0, vocab, (micro_batch, seq + 1), generator=generator)
        batches.append(
            {
                "tokens": tokens[:, :-1],
                "labels": tokens[:, 1:],
                "loss_mask": torch.ones(micro_batch, seq),
                "position_ids": torch.arange(seq).expand(micro_batch, -1),
            }
        )
    return batches
