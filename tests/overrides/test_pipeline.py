"""The pipeline's backward messages carry only the student's half of the activation gradient: a real 2-stage 1F1B
step (torchrun, gloo p2p) with every message's shape recorded. That the gradients are still right is checked by
tests/train/test_parallel_equivalence.py (pp=2 and pp=4 layouts equal a single process)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import run_torchrun

WORKER = Path(__file__).with_name("pipeline_worker.py")


@pytest.mark.multiprocess
def test_backward_messages_carry_only_the_student_half():
    first, last = sorted(run_torchrun(WORKER, 2), key=lambda r: r["pp_rank"])
    n, s, b = first["micro_batches"], first["seq_length"], first["micro_batch_size"]
    h_s, h_t = first["student_hidden"], first["teacher_hidden"]
    both, student_only = [s, b, h_s + h_t], [s, b, h_s]
    assert first["sent_forward"] == last["received_forward"] == [both] * n
    assert last["sent_backward"] == first["received_backward"] == [student_only] * n
    assert first["sent_backward"] == first["received_forward"] == last["sent_forward"] == []
    assert first["loss"] == last["loss"]
