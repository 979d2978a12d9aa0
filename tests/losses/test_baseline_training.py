"""akl, dkd and ctkd through the trainer: short runs of the entry point, ctkd's temperature checkpointed and restored
exactly on resume, and the same losses, gradient norms and temperature at tp 2, dp 2 and pp 2 as in one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taidtron import checkpoint
from tests.checkpoint.helpers import read_metrics, restart_from, run_train, train_args
from tests.hf.helpers import import_cli, make_qwen2
from tests.support import run_torchrun

WORKER = Path(__file__).with_name("objective_worker.py")
STEP_WORKER = Path(__file__).parents[1] / "train" / "step_worker.py"
STEPS = 4
EXACT_KEYS = ("step", "consumed_samples", "loss", "lr", "grad_norm")


@pytest.fixture(scope="module")
def teacher_ckpt(tmp_path_factory) -> Path:
    """A tiny imported Qwen2 (as tests/checkpoint's): a trained-looking teacher that is the same in every run."""
    root = tmp_path_factory.mktemp("teacher")
    return import_cli(make_qwen2(root / "qwen2_hf"), root / "qwen2_ckpt")


def _args(run: Path, teacher_ckpt: Path, loss: str, *extra: str) -> list[str]:
    return train_args(
        run, teacher_ckpt, f"taid.loss={loss}", f"optim.train_steps={STEPS}", "checkpoint.save_interval=1", *extra
    )


@pytest.fixture(scope="module")
def ctkd_straight(teacher_ckpt, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "ctkd"
    run_train(_args(run, teacher_ckpt, "ctkd", "checkpoint.keep_last=4", "taid.ctkd_ramp_fraction=0.5"))
    return run


def _objective_state(run: Path, step: int) -> dict:
    return checkpoint.read_meta(run / "checkpoints" / f"iter_{step:07d}").trainer["objective"]


@pytest.mark.parametrize("loss", ["akl", "dkd"])
def test_akl_and_dkd_train_through_the_entry_point(loss, teacher_ckpt, tmp_path):
    proc = run_train(_args(tmp_path, teacher_ckpt, loss, "logging.eval_interval=2"))
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["loss"] > 0 and r["grad_norm"] > 0 and not r["skipped"] for r in rows)
    assert not any("taid_t" in r for r in rows)
    options = {"akl": "akl_mu 0.5", "dkd": "dkd_alpha 1, dkd_beta 0.5, dkd_temperature 1"}[loss]
    assert f"objective   taid.loss={loss}, {options}" in proc.stdout
    evals = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [2, 4] and all(e["valid_distill_loss"] > 0 for e in evals)


def test_ctkd_trains_its_temperature_and_checkpoints_it(ctkd_straight):
    rows = read_metrics(ctkd_straight)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert all(r["loss"] > 0 and not r["skipped"] for r in rows)
    thetas = [_objective_state(ctkd_straight, step)["parameters"][0][0] for step in range(1, STEPS + 1)]
    adam_steps = [_objective_state(ctkd_straight, step)["adam"][0]["step"][0] for step in range(1, STEPS + 1)]
    assert adam_steps == [1.0, 2.0, 3.0, 4.0]
    # step 1: lr 0 (warm-up) and lambda 0 (start of the curriculum) leave theta at 1; then it moves every step
    assert thetas[0] == 1.0 and len(set(thetas)) == STEPS


def test_ctkd_restart_halfway_gives_identical_metrics_and_temperature(ctkd_straight, teacher_ckpt, tmp_path):
    resumed = tmp_path / "resumed"
    restart_from(ctkd_straight, STEPS // 2, resumed)
    proc = run_train(_args(resumed, teacher_ckpt, "ctkd", "checkpoint.keep_last=4", "taid.ctkd_ramp_fraction=0.5"))
    assert f"resumed from {resumed / 'checkpoints' / 'iter_0000002'}" in proc.stdout + proc.stderr
    want = [{k: row[k] for k in EXACT_KEYS} for row in read_metrics(ctkd_straight)]
    got = [{k: row[k] for k in EXACT_KEYS} for row in read_metrics(resumed)]
    assert got == want
    for step in (3, 4):
        assert _objective_state(resumed, step) == _objective_state(ctkd_straight, step)


def test_a_ctkd_checkpoint_without_the_temperature_is_refused_on_resume(ctkd_straight, teacher_ckpt, tmp_path):
    resumed = tmp_path / "resumed"
    restart_from(ctkd_straight, STEPS // 2, resumed)
    meta_file = resumed / "checkpoints" / "iter_0000002" / checkpoint.META_FILE
    meta = json.loads(meta_file.read_text())
    del meta["trainer"]["objective"]
    meta_file.write_text(json.dumps(meta))
    proc = run_train(_args(resumed, teacher_ckpt, "ctkd", "taid.ctkd_ramp_fraction=0.5"), expect_ok=False)
    assert proc.returncode == 2
    assert "taid.loss=ctkd trains parameters of its own, but the checkpoint holds none" in proc.stderr


@pytest.mark.multiprocess
def test_losses_and_temperature_do_not_depend_on_the_layout(tmp_path):
    """akl, dkd, ctkd at tp 2 (vocabulary shards), dp 2 (a different token count per replica) and pp 2 (the
    temperature's gradient only on the last stage) against one process: same losses, gradient norms, and ctkd's
    temperature gradient and value on every rank."""
    student_init, teacher_init = tmp_path / "student_init", tmp_path / "teacher_init"
    run_torchrun(STEP_WORKER, 1, str(tmp_path), "init", str(student_init), str(teacher_init))
    (reference,) = run_torchrun(WORKER, 1, str(tmp_path), str(student_init), str(teacher_init), json.dumps({"one": []}))
    layouts = {"tp2": ["parallel.tp=2"], "dp2": [], "pp2": ["parallel.pp=2"]}
    ranks = run_torchrun(WORKER, 2, str(tmp_path), str(student_init), str(teacher_init), json.dumps(layouts))
    want = reference["one"]
    assert want["ctkd"]["theta_grad"][0] != 0.0 and len(set(want["ctkd"]["theta"])) == 3
    # fp32 sums in another order: ~1e-7 of the loss's terms; ctkd's loss is tau^2 (~240) times a KL of ~1e-4 here,
    # so its rounding shows at ~1e-5 of its value
    tolerance = {"loss": (1e-5, 1e-5), "grad_norm": (1e-4, 0.0), "theta_grad": (1e-3, 1e-12), "theta": (1e-6, 0.0)}
    misses = []
    for rank, results in enumerate(ranks):
        for layout in layouts:
            for loss, got in results[layout].items():
                for key, (rel, abs_) in tolerance.items():
                    if got[key] != pytest.approx(want[loss][key], rel=rel, abs=abs_):
                        misses.append(f"rank {rank} {layout} {loss} {key}: {got[key]} vs {want[loss][key]}")
    assert not misses, "\n".join(misses)
