"""Divergence through `python -m taidtron.train`: a step whose loss or gradient norm is not finite is skipped
(no weight, optimizer, LR or t change), counted and logged as strict JSON; optim.max_skipped_steps in a row stop the
run with exit code 2; a checkpoint never holds NaN or inf (the save is refused, the previous one stays `latest`); and
a lower learning rate, accepted with checkpoint.override, resumes from it and is the rate actually used."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.checkpoint.helpers import read_metrics, restart_from, run_train

from .test_training_run import TINY

BASE = ["--config", "configs/smoke.yaml", *TINY, "logging.eval_interval=0", "checkpoint.keep_last=0"]


def strict_rows(path: Path) -> list[dict]:
    """The rows of a JSONL file, refusing the non-standard NaN / Infinity tokens."""

    def refuse(token):
        raise AssertionError(f"{path.name} holds a bare {token}")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


def checkpoint_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a dist checkpoint, read with torch's own DCP reader (no process group, no taidtron)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = directory.parent / f"{directory.name}.pt"
    dcp_to_torch_save(str(directory), str(out))
    state = torch.load(out, weights_only=False)
    out.unlink()

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            elif isinstance(value, torch.Tensor) and value.is_floating_point():
                yield f"{prefix}{key}", value

    return dict(leaves(state))


def trainer_state(directory: Path) -> dict:
    return json.loads((directory / "taidtron.json").read_text())["trainer"]


def test_non_finite_steps_are_skipped_logged_and_change_nothing_then_the_streak_stops_the_run(tmp_path):
    """The issue's command (random teacher, lr 1e6, no warm-up, a save every step): the first update throws the
    weights to ~1e6, later gradients are NaN. Those steps are skipped and the run ends; every checkpoint is finite;
    the final one, written at a skipped step, equals the last applied step's bit for bit."""
    run = tmp_path / "lr1e6"
    args = [
        *BASE,
        "optim.lr=1e6",
        "optim.min_lr=0",
        "optim.warmup_steps=0",
        "checkpoint.save_interval=1",
        f"logging.run_dir={run}",
    ]
    proc = run_train([*args, "optim.train_steps=6"])
    rows = strict_rows(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))
    skipped = [r["step"] for r in rows if r["skipped"]]
    print("skipped steps:", skipped, "grad norms:", [r["grad_norm"] for r in rows])
    assert skipped and skipped[-1] == 6, "the run must diverge, or the test shows nothing"
    first = skipped[0]
    assert skipped == list(range(first, 7))  # once the weights are broken, every step is skipped
    assert [r["skipped_steps"] for r in rows] == [max(0, s - first + 1) for s in range(1, 7)]
    for r in rows:
        if r["skipped"]:
            assert r["loss"] is None or r["grad_norm"] is None  # written as null, never NaN
            assert f"step {r['step']} skipped: loss" in proc.stdout
    # No LR or t change across skipped steps.
    tail = rows[first - 1 :]
    assert len({r["lr"] for r in tail}) == 1 and len({r["taid_t"] for r in tail}) == 1

    # Periodic saves wait for an applied step; the last step always saves. Every checkpoint is finite.
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("iter_*")) == [f"iter_{s:07d}" for s in [*range(1, first), 6]]
    for directory in ckpts.glob("iter_*"):
        assert all(bool(torch.isfinite(t).all()) for t in checkpoint_tensors(directory).values()), directory
    # The checkpoint at step 6 (skipped) holds exactly the state of the last applied step.
    before, after = ckpts / f"iter_{first - 1:07d}", ckpts / "iter_0000006"
    old, new = checkpoint_tensors(before), checkpoint_tensors(after)
    assert old.keys() == new.keys() and all(torch.equal(old[k], new[k]) for k in old)  # weights and Adam state
    old_state, new_state = trainer_state(before), trainer_state(after)
    assert new_state["scheduler"]["num_steps"] == old_state["scheduler"]["num_steps"] == first - 1
    assert new_state["taid"] == old_state["taid"]
    assert new_state["step"] == 6 and new_state["skipped_steps"] == 6 - first + 1

    # Extending the run continues the streak; at optim.max_skipped_steps in a row it stops with one message.
    limit = 6 - first + 2
    proc = run_train([*args, "optim.train_steps=20", f"optim.max_skipped_steps={limit}"], expect_ok=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    (message,) = [line for line in proc.stderr.splitlines() if line.startswith("taidtron: error:")]
    assert f"training diverged: {limit} steps in a row ({first}-7)" in message
    assert f"{ckpts / 'iter_0000006'} is still the latest checkpoint" in message
    assert "checkpoint.override=[optim.lr]" in message and "Traceback" not in proc.stderr
    assert [r["step"] for r in strict_rows(run / "metrics.jsonl")][-1] == 7
    assert (ckpts / "latest").read_text() == "iter_0000006"


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """Six healthy steps, a checkpoint after each."""
    run = tmp_path_factory.mktemp("divergence") / "straight"
    run_train(
        [*BASE, "optim.train_steps=6", "optim.warmup_steps=1", "checkpoint.save_interval=1", f"logging.run_dir={run}"]
    )
    return run


def cosine_lr(num_steps: int, *, max_lr: float, min_lr: float, warmup: int, horizon: int) -> float:
    """The documented schedule, written out: linear warm-up from 0, then cosine decay to min_lr at `horizon`."""
    if num_steps <= warmup:
        return max_lr * num_steps / warmup
    ratio = (num_steps - warmup) / (horizon - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def test_a_blow_up_between_saves_stops_before_it_is_saved_and_a_lower_lr_resumes_from_latest(straight, tmp_path):
    run = tmp_path / "run"
    restart_from(straight, 3, run)
    common = [*BASE, "optim.train_steps=6", "optim.warmup_steps=1", f"logging.run_dir={run}"]

    # lr 1e38 from step 4 on: step 4's loss and gradients are finite, so it is applied and throws the weights to
    # ~1e38 (finite: Adam moves each weight by about lr); from step 5 the gradients are NaN and the steps skipped.
    # The streak stops the run before anything is saved, so `latest` stays the last good checkpoint.
    proc = run_train(
        [
            *common,
            "checkpoint.save_interval=0",
            "optim.max_skipped_steps=2",
            "optim.lr=1e38",
            "optim.min_lr=1e38",
            "checkpoint.override=[optim.lr,optim.min_lr]",
        ],
        expect_ok=False,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    (message,) = [line for line in proc.stderr.splitlines() if line.startswith("taidtron: error:")]
    print(message)
    assert "training diverged: 2 steps in a row (5-6)" in message
    assert f"{run / 'checkpoints' / 'iter_0000003'} is still the latest checkpoint" in message
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_0000003", "latest"]
    rows = strict_rows(run / "metrics.jsonl")
    assert [r["skipped"] for r in rows[3:]] == [False, True, True] and rows[3]["lr"] == 1e38
    tensors = checkpoint_tensors(run / "checkpoints" / "iter_0000003")  # latest loads, with finite values
    assert tensors and all(bool(torch.isfinite(t).all()) for t in tensors.values())

    # Without checkpoint.override the lower lr is refused, naming the key with both values.
    common.append("checkpoint.save_interval=1")
    proc = run_train([*common, "optim.lr=1e-3", "optim.min_lr=1e-4"], expect_ok=False)
    assert proc.returncode == 2
    assert "optim.lr 0.003 -> 0.001" in proc.stderr and "checkpoint.override=[optim.lr,optim.min_lr]" in proc.stderr

    # Accepted on purpose: resumes from step 3 with the new schedule, which the optimizer actually uses.
    proc = run_train([*common, "optim.lr=1e-3", "optim.min_lr=1e-4", "checkpoint.override=[optim.lr,optim.min_lr]"])
    assert f"resumed from {run / 'checkpoints' / 'iter_0000003'} at step 3" in proc.stdout
    assert "optim.lr 0.003 -> 0.001 (checkpoint.override)" in proc.stdout
    rows = strict_rows(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7)) and not any(r["skipped"] for r in rows)
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    straight_rows = read_metrics(straight)
    assert [r["lr"] for r in rows[:3]] == [r["lr"] for r in straight_rows[:3]]
    for row in rows[3:]:  # the LR scheduler had done row["step"] - 1 steps when this one ran
        assert row["lr"] == pytest.approx(
            cosine_lr(row["step"] - 1, max_lr=1e-3, min_lr=1e-4, warmup=1, horizon=6), rel=1e-12
        )
    assert rows[3]["lr"] < straight_rows[3]["lr"] / 2

    # The run directory keeps what each start ran with.
    starts = sorted((run / "configs").glob("start_*.yaml"))
    assert [p.name[:10] for p in starts] == ["start_0001", "start_0002"]  # the refused start wrote none
    assert "optim.lr 0.003 -> 1e+38 (checkpoint.override)" in starts[0].read_text().splitlines()[0]
    assert (run / "config.yaml").read_text() == starts[1].read_text()
    import yaml

    assert yaml.safe_load((run / "config.yaml").read_text())["optim"]["lr"] == 1e-3
