"""Float64 references of the validation diagnostics and logits with planted ties, shared by test_diagnostics.py
and its torchrun worker (which imports it as a plain module)."""

from __future__ import annotations

import torch

TIED = (100, 900)
"""Two vocabulary ids, in different shards at TP 2 and 4, that hold an exact tie for the maximum in planted tokens."""


def plant_ties(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token (0, 0): both models' maximum is tied between TIED[0] and TIED[1] (argmax: the lower id, both agree).
    Token (1, 0): the student's tie as before, the teacher's maximum at TIED[1] alone (they disagree)."""
    student, teacher = student.clone(), teacher.clone()
    for x in (student, teacher):
        x[0, 0, list(TIED)] = 100.0
    student[1, 0, list(TIED)] = 100.0
    teacher[1, 0, TIED[1]] = 100.0
    return student, teacher


def entropy_reference(logits: torch.Tensor, vocab: int) -> torch.Tensor:
    """H(softmax) over the true vocabulary, float64."""
    log_p = torch.log_softmax(logits.double()[..., :vocab], dim=-1)
    return -(log_p.exp() * log_p).sum(-1)


def top1_reference(student: torch.Tensor, teacher: torch.Tensor, vocab: int) -> torch.Tensor:
    """1.0 where torch.argmax over the true vocabulary (the first maximum) is the same for both."""
    return (student[..., :vocab].argmax(-1) == teacher[..., :vocab].argmax(-1)).float()
