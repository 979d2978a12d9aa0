"""TAIDSchedule against the rule of docs/taid.md, written out again independently here."""

from __future__ import annotations

import math
import random

import pytest

from taidtron.losses import TAIDSchedule

TOTAL = 200


def rule(losses, t_start=0.4, t_end=1.0, alpha=5e-4, beta=0.99, first_step=1, total=TOTAL):
    """The official adaptive rule, one t per loss, steps first_step, first_step+1, ..."""
    t, m, prev, out = t_start, 0.0, None, []
    for i, loss in enumerate(losses):
        step = first_step + i
        if prev is None:
            prev = loss
            out.append(t)
            continue
        delta = (prev - loss) / (prev + 1e-15)
        m = beta * m + (1 - beta) * delta
        dt = alpha * (1 / (1 + math.exp(-m))) * (1 - t)
        t_lin = t_start + (t_end - t_start) * step / total
        t = min(t_end, max(t_lin, t + dt))
        prev = loss
        out.append(t)
    return out


def loss_curve(seed: int, n: int = TOTAL) -> list[float]:
    """A noisy decaying loss with occasional spikes, so delta takes both signs."""
    rng = random.Random(seed)
    return [
        3.0 * math.exp(-i / 60) + 0.5 + rng.uniform(-0.2, 0.2) + (1.5 if rng.random() < 0.05 else 0.0) for i in range(n)
    ]


def run(schedule: TAIDSchedule, losses, first_step=1, total=TOTAL):
    return [schedule.update(loss, first_step + i, total) for i, loss in enumerate(losses)]


def test_first_update_only_records_the_loss_and_keeps_t_start():
    sched = TAIDSchedule()
    assert sched.t == 0.4 and sched.prev_loss is None
    assert sched.update(2.5, 1, TOTAL) == 0.4
    assert sched.t == 0.4 and sched.prev_loss == 2.5 and sched.m == 0.0


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("alpha", [5e-4, 0.05, 2.0])
def test_t_sequence_equals_the_official_rule(seed, alpha):
    losses = loss_curve(seed)
    got = run(TAIDSchedule(alpha=alpha), losses)
    assert got == pytest.approx(rule(losses, alpha=alpha), rel=0, abs=1e-15)


@pytest.mark.parametrize("alpha", [5e-4, 0.05, 2.0])
def test_t_is_monotone_above_the_linear_floor_and_at_most_t_end(alpha):
    sched = TAIDSchedule(t_start=0.2, t_end=0.9, alpha=alpha)
    ts = run(sched, loss_curve(3))
    assert all(b >= a for a, b in zip(ts, ts[1:]))
    assert all(t <= 0.9 for t in ts)
    # from the second update on (the first only records the loss), t never drops below t_lin
    assert all(t >= 0.2 + 0.7 * step / TOTAL - 1e-12 for step, t in enumerate(ts, start=1) if step > 1)
    if alpha >= 0.05:
        assert ts[-1] == pytest.approx(0.9)


def test_rising_loss_still_moves_t_forward_but_slower():
    down = run(TAIDSchedule(alpha=0.05), [3.0 - 0.01 * i for i in range(50)])
    up = run(TAIDSchedule(alpha=0.05), [1.0 + 0.01 * i for i in range(50)])
    assert all(b >= a for a, b in zip(up, up[1:]))
    assert up[-1] < down[-1]


def test_non_adaptive_gives_the_linear_schedule():
    sched = TAIDSchedule(t_start=0.3, t_end=0.8, adaptive=False)
    ts = run(sched, loss_curve(4), first_step=0, total=TOTAL - 1)
    assert ts == pytest.approx([0.3 + 0.5 * step / (TOTAL - 1) for step in range(TOTAL)], abs=1e-15)
    assert ts[0] == 0.3 and ts[-1] == pytest.approx(0.8)


def test_state_dict_round_trip_mid_run_continues_identically():
    losses = loss_curve(5)
    straight = run(TAIDSchedule(alpha=0.05), losses)

    first = TAIDSchedule(alpha=0.05)
    head = run(first, losses[:77])
    state = first.state_dict()
    assert set(state) == {"t", "m", "prev_loss"}
    resumed = TAIDSchedule(alpha=0.05)
    resumed.load_state_dict(dict(state))
    tail = run(resumed, losses[77:], first_step=78)
    assert head + tail == straight  # bitwise: the state is the whole state


def test_load_state_dict_missing_key_raises():
    with pytest.raises(ValueError, match="missing"):
        TAIDSchedule().load_state_dict({"t": 0.5})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(t_start=0.9, t_end=0.5), "t_start"),
        (dict(t_start=-0.1), "t_start"),
        (dict(t_end=1.1), "t_end"),
        (dict(alpha=-1e-3), "alpha"),
        (dict(beta=1.0), "beta"),
        (dict(beta=-0.1), "beta"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TAIDSchedule(**kwargs)


@pytest.mark.parametrize(
    "loss, step, total, match",
    [
        (float("nan"), 1, 10, "not finite"),
        (float("inf"), 1, 10, "not finite"),
        (1.0, 11, 10, "step"),
        (1.0, -1, 10, "step"),
        (1.0, 1, 0, "total_steps"),
        (1.0, 1.5, 10, "step"),
    ],
)
def test_invalid_update_arguments_raise_value_error(loss, step, total, match):
    with pytest.raises(ValueError, match=match):
        TAIDSchedule().update(loss, step, total)
