"""taidtron's losses and t schedule against the formulas of the official TAID code (SakanaAI/TAID,
`src/distil_losses/`), written out again here in float64 from their definitions there:

- taid: -sum p_t log q with p_t = softmax((1-t) stopgrad(s) + t T); t moves once per call with `global_step`, the
  optimizer steps done *before* the current one, in the linear floor;
- fkl, skew_fkl: the official code reports cross-entropies (-sum p log q, -sum p log m); taidtron reports the KL
  divergences, i.e. the official value minus the teacher's entropy (no gradient, the same training);
- rkl, tvd, skew_rkl (m = (1 - w) p_T + w q), js (teacher weight w = 0.1 by default): the same values.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from taidtron.config import TAIDConfig
from taidtron.losses import LOSSES, TAIDSchedule, vocab_parallel_js_loss

from .loss_reference import VOCAB, make_logits

SEQ, BATCH = 6, 2
W = 0.1  # the official default weight of skew and js losses


def _official(name: str, s: torch.Tensor, T: torch.Tensor, t: float = 0.4) -> torch.Tensor:
    """Per-token value of the official loss (before its masked token mean), float64 over the true vocabulary."""
    s, T = s.double()[..., :VOCAB], T.double()[..., :VOCAB]
    p, q = torch.softmax(T, -1), torch.softmax(s, -1)
    log_p, log_q = torch.log_softmax(T, -1), torch.log_softmax(s, -1)
    if name == "taid":
        return -(torch.softmax((1 - t) * s + t * T, -1) * log_q).sum(-1)
    if name == "fkl":
        return -(p * log_q).sum(-1)
    if name == "rkl":
        return -(q * log_p - q * log_q).sum(-1)
    if name == "tvd":
        return 0.5 * (p - q).abs().sum(-1)
    if name == "skew_fkl":
        return -(p * torch.log(W * p + (1 - W) * q)).sum(-1)
    if name == "skew_rkl":
        log_m = torch.log((1 - W) * p + W * q)
        return -(q * log_m - q * log_q).sum(-1)
    if name == "js":
        log_m = torch.log(W * p + (1 - W) * q)
        reverse = -(q * log_m - q * log_q).sum(-1)
        forward = -(p * log_m - p * log_p).sum(-1)
        return (1 - W) * reverse + W * forward
    raise ValueError(name)


def _teacher_entropy(T: torch.Tensor) -> torch.Tensor:
    log_p = torch.log_softmax(T.double()[..., :VOCAB], -1)
    return -(log_p.exp() * log_p).sum(-1)


@pytest.mark.parametrize("name", [name for name in LOSSES if name not in ("akl", "ctkd", "dkd")])
def test_values_match_the_official_formulas_up_to_the_documented_entropy_term(name):
    """(akl, ctkd, dkd against their official formulas: test_official_baselines.py.)"""
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=61)
    options = {"skew": W} if name.startswith("skew") else {}
    ours = LOSSES[name](student, teacher, t=0.4, vocab_size=VOCAB, group=None, **options).double()
    official = _official(name, student, teacher)
    if name in ("fkl", "skew_fkl"):  # the official value is the cross-entropy: KL plus the teacher's entropy
        official = official - _teacher_entropy(teacher)
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-5)


def test_js_default_teacher_weight_is_the_official_one():
    assert inspect.signature(vocab_parallel_js_loss).parameters["beta"].default == W
    assert TAIDConfig().js_beta == W
    student, teacher = make_logits((SEQ, BATCH), "wide", seed=62)
    torch.testing.assert_close(
        LOSSES["js"](student, teacher, t=0.4, vocab_size=VOCAB, group=None).double(),
        _official("js", student, teacher),
        rtol=1e-5,
        atol=1e-5,
    )


def _official_t_trajectory(losses: list[float], total: int, t_start=0.4, t_end=1.0, alpha=5e-4, beta=0.99):
    """The official `update_t`, once per optimizer step, with global_step = the steps done before this one."""
    t, prev, momentum, out = t_start, math.inf, 0.0, []
    for global_step, loss in enumerate(losses):
        if math.isinf(prev):
            prev = loss
        else:
            momentum = beta * momentum + (1 - beta) * (prev - loss) / (prev + 1e-15)
            t_target = t_start + (t_end - t_start) * global_step / total
            t = min(t_end, max(t_target, t + alpha * (1 / (1 + math.exp(-momentum))) * (1 - t)))
            prev = loss
        out.append(t)
    return out


def test_schedule_as_the_trainer_drives_it_follows_the_official_global_step_convention():
    total = 10
    losses = [5.0, 4.0, 3.9, 3.95, 3.0, 2.9, 2.9, 2.5, 2.4, 2.3]
    schedule = TAIDSchedule()
    ours = [schedule.update(loss, steps_done, total) for steps_done, loss in enumerate(losses)]  # as Trainer does
    assert ours == pytest.approx(_official_t_trajectory(losses, total), rel=1e-12, abs=1e-12)
    # with alpha=0 t is the linear floor: after the last step it is still below t_end, as in the official code
    floor = TAIDSchedule(alpha=0.0)
    last = [floor.update(loss, steps_done, total) for steps_done, loss in enumerate(losses)][-1]
    assert last == pytest.approx(0.4 + 0.6 * 9 / 10)
