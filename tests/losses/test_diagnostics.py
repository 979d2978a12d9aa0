"""Validation diagnostics (taidtron/losses/diagnostics.py): entropy and top-1 agreement on vocab-parallel logits
equal a float64 reference over the true vocabulary, at TP 1, 2 and 4, ties and padding junk included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from taidtron.losses.diagnostics import vocab_parallel_entropy, vocab_parallel_top1_agreement
from tests.support import run_torchrun

from .diagnostics_reference import entropy_reference, plant_ties, top1_reference
from .loss_reference import VOCAB, make_logits

WORKER = Path(__file__).with_name("diagnostics_worker.py")


@pytest.mark.parametrize("scale", ["unit", "wide", "extreme"])
def test_entropy_and_agreement_match_the_float64_reference_with_padding_junk(scale):
    student, teacher = plant_ties(*make_logits((7, 3), scale, seed=5))
    for vocab in (VOCAB, 700):
        for logits in (student, teacher):
            got = vocab_parallel_entropy(logits, vocab_size=vocab, chunk_tokens=4)
            torch.testing.assert_close(got.double(), entropy_reference(logits, vocab), rtol=1e-5, atol=1e-5)
        agree = vocab_parallel_top1_agreement(student, teacher, vocab_size=vocab)
        assert torch.equal(agree, top1_reference(student, teacher, vocab))
    assert agree[0, 0] == 1 and agree[1, 0] == 0  # the planted ties resolve to the lower id


def test_bf16_logits_give_fp32_entropy_and_leave_the_input_untouched():
    student, _ = make_logits((4, 2), "wide", seed=6)
    fp32 = student.clone()
    vocab_parallel_entropy(fp32, vocab_size=VOCAB)
    assert torch.equal(fp32, student)  # the chunk is shifted out of place even when no cast copies it
    got = vocab_parallel_entropy(student.to(torch.bfloat16), vocab_size=VOCAB)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), entropy_reference(student.to(torch.bfloat16), VOCAB), rtol=1e-4, atol=1e-4)


@pytest.mark.multiprocess
@pytest.mark.parametrize("tp", [2, 4])
def test_tensor_parallel_equals_the_reference_with_two_collectives_each(tp):
    for rank in run_torchrun(WORKER, tp):
        assert rank["diagnostics"] == "ok"
        assert rank["entropy_collectives"] == ["MAX (21,)", "SUM (21, 2)"]
        assert rank["top1_collectives"] == ["MAX (21, 2)", "MIN (21, 2)"]
