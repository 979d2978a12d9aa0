"""What a start does with the checkpoints already in its run directory, through `python -m taidtron.train` and
`checkpoint.plan_resume`: a finished run is never resumed nor its config rewritten; a config that differs in a key the
checkpoint fixes is refused (old and new values, the override that accepts it); another tokenizer is refused; a
damaged `latest` names the complete checkpoints and `checkpoint.load_iteration` resumes from one (eval.jsonl cut
back like metrics.jsonl); an extended run keeps its LR and t schedules' horizon unless told otherwise."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest

from taidtron import checkpoint
from taidtron.config import CheckpointConfig, load_config
from tests.train.test_training_run import TINY

from .helpers import read_metrics, restart_from, run_train

STEPS = 4


def args_for(run: Path, *extra: str) -> list[str]:
    return [
        "--config",
        "configs/smoke.yaml",
        *TINY,
        f"optim.train_steps={STEPS}",
        "optim.warmup_steps=1",
        "checkpoint.save_interval=1",
        "checkpoint.keep_last=0",
        "logging.eval_interval=2",
        "logging.eval_iters=1",
        f"logging.run_dir={run}",
        *extra,
    ]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A complete 4-step run: a checkpoint per step, validation at steps 2 and 4."""
    run = tmp_path_factory.mktemp("rules") / "finished"
    run_train(args_for(run))
    return run


def error_line(proc) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    (line,) = [line for line in proc.stderr.splitlines() if line.startswith("taidtron: error:")]
    print(line)
    return line


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_compare_configs_classifies_every_difference():
    saved = load_config("configs/smoke.yaml").to_dict()
    current = load_config(
        "configs/smoke.yaml",
        [
            "logging.eval_interval=10",
            "parallel.tp=2",
            "optim.train_steps=300",
            "optim.lr=1e-3",
            "taid.alpha=1e-3",
            "data.seq_length=256",
            "student.hidden_size=256",
            "seed=7",
            "checkpoint.override=[optim.lr]",
        ],
    ).to_dict()
    kinds = {c.key: c.kind for c in checkpoint.compare_configs(saved, current, ["optim.lr"])}
    assert kinds == {
        "logging.eval_interval": "free",
        "parallel.tp": "free",
        "checkpoint.override": "free",
        "optim.train_steps": "extended",
        "optim.lr": "override",
        "taid.alpha": "refused",
        "data.seq_length": "refused",
        "student.hidden_size": "frozen",
        "seed": "frozen",
    }
    shorter = load_config("configs/smoke.yaml", ["optim.train_steps=100"]).to_dict()
    assert [c.kind for c in checkpoint.compare_configs(saved, shorter)] == ["refused"]  # shortening is not free
    # Without a teacher (taid.loss=lm) the teacher section is not part of the run.
    lm = load_config("configs/smoke.yaml", ["taid.loss=lm"]).to_dict()
    lm_other_teacher = load_config("configs/smoke.yaml", ["taid.loss=lm", "teacher.num_layers=8"]).to_dict()
    assert checkpoint.compare_configs(lm, lm_other_teacher) == []


def test_a_finished_run_is_neither_resumed_nor_rewritten(finished):
    before = snapshot(finished)
    line = error_line(run_train(args_for(finished, "optim.lr=1e-3"), expect_ok=False))  # the README's example
    assert f"the run in {finished / 'checkpoints'} is complete: iter_0000004 is at step 4 = optim.train_steps" in line
    assert "raise optim.train_steps" in line and "choose another logging.run_dir" in line
    assert snapshot(finished) == before  # config.yaml, configs/, metrics, eval, checkpoints: all as they were


def test_a_changed_key_is_refused_with_both_values_and_how_to_accept_it(finished, tmp_path):
    run = tmp_path / "run"
    restart_from(finished, 2, run)
    line = error_line(
        run_train(args_for(run, "optim.lr=1e-3", "taid.alpha=1e-3", "student.hidden_size=96"), expect_ok=False)
    )
    assert "in keys the checkpoint fixes: optim.lr 0.003 -> 0.001, taid.alpha 0.0005 -> 0.001" in line
    assert "resume with checkpoint.override=[optim.lr,taid.alpha]" in line
    assert "student.hidden_size 64 -> 96, which no resume can change" in line
    assert read_metrics(run)[-1]["step"] == 2 and not (run / "config.yaml").exists()  # nothing ran


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory) -> Path:
    """Another 1024-piece sentencepiece model (BPE on a sample of the smoke corpus)."""
    from taidtron.data.tokenizer_training import train_sentencepiece

    return train_sentencepiece(
        ["data/smoke/corpus.jsonl"],
        tmp_path_factory.mktemp("tok") / "other",
        vocab_size=1024,
        model_type="bpe",
        max_sentences=1000,
    )


def test_another_tokenizer_is_refused_on_resume_and_for_init_checkpoints(finished, other_tokenizer, tmp_path):
    from taidtron.data.tokenizer import load_tokenizer

    ours = load_tokenizer("data/smoke/tokenizer.model").fingerprint()
    theirs = load_tokenizer(other_tokenizer).fingerprint()
    assert ours != theirs
    run = tmp_path / "run"
    restart_from(finished, 2, run)
    line = error_line(run_train(args_for(run, f"data.tokenizer={other_tokenizer}"), expect_ok=False))
    assert ours[:12] in line and theirs[:12] in line  # both named
    assert read_metrics(run)[-1]["step"] == 2

    # A checkpoint given as teacher.init / student.init records its tokenizer too.
    meta = checkpoint.read_meta(finished / "checkpoints")
    with pytest.raises(checkpoint.CheckpointError) as info:
        checkpoint.check_tokenizer(meta, "teacher.init runs/x", checkpoint.TokenizerRef.of(other_tokenizer, theirs))
    assert "teacher.init runs/x was trained with the tokenizer" in str(info.value)
    assert ours[:12] in str(info.value) and theirs[:12] in str(info.value)


def test_a_damaged_latest_names_the_complete_checkpoints_and_load_iteration_resumes(finished, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    ckpts = run / "checkpoints"
    damaged = sorted((ckpts / "iter_0000004").glob("*.distcp"))[0]
    with open(damaged, "r+b") as f:
        f.truncate(damaged.stat().st_size // 2)
    line = error_line(run_train(args_for(run), expect_ok=False))
    assert f"the latest checkpoint cannot be loaded: {ckpts / 'latest'} names 'iter_0000004'" in line
    assert "is truncated" in line
    assert "Complete checkpoints there: iter_0000003 (step 3), iter_0000002 (step 2), iter_0000001 (step 1)" in line
    assert "checkpoint.load_iteration=3" in line

    cfg = load_config(None, [f"logging.run_dir={run}"])
    ref = checkpoint.read_meta(ckpts / "iter_0000001").tokenizer
    with pytest.raises(
        checkpoint.CheckpointError,
        match=r"checkpoint.load_iteration=9: .*iter_0000009 does not "
        r"exist.*Complete checkpoints there: iter_0000003",
    ):
        checkpoint.plan_resume(dataclasses.replace(cfg.checkpoint, load_iteration=9), ckpts, cfg.to_dict(), ref)
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint.resume=false, but .* holds checkpoints"):
        checkpoint.plan_resume(CheckpointConfig(resume=False), ckpts, cfg.to_dict(), ref)

    proc = run_train(args_for(run, "checkpoint.load_iteration=3"))
    assert f"resumed from {ckpts / 'iter_0000003'} at step 3" in proc.stdout
    assert "newer checkpoints iter_0000004 are from an abandoned continuation and will be replaced" in proc.stdout
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [(e["step"], e.get("final", False)) for e in evals] == [(2, False), (4, True)]  # cut back, not doubled
    assert checkpoint.verify_checkpoint(ckpts).step == 4  # the damaged iteration was replaced
    assert len(list((run / "configs").glob("start_*.yaml"))) == 2


def test_bytes_overwritten_in_latest_are_refused_naming_the_newest_intact_iteration(finished, tmp_path):
    """Same sizes, other bytes (the sizes and the index check pass): the digests catch it. Two ranks split the
    reading; the message names the file and skips to the newest iteration that is complete and intact."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    ckpts = run / "checkpoints"
    for name in ("iter_0000004", "iter_0000003"):
        largest = max((ckpts / name).glob("*.distcp"), key=lambda f: f.stat().st_size)
        with open(largest, "r+b") as f:
            f.seek(largest.stat().st_size // 2)
            f.write(b"\xff" * 64)
    before = snapshot(run)
    line = error_line(run_train(args_for(run, "optim.train_steps=6"), nproc=2, expect_ok=False))
    assert f"{ckpts / 'iter_0000004'}/__0_" in line and "is damaged: its bytes differ from those written" in line
    assert (
        "The newest complete and intact checkpoint there is iter_0000002 (step 2); resume from it with "
        "checkpoint.load_iteration=2." in line
    )
    assert snapshot(run) == before  # nothing trained, nothing rewritten


def cosine_lr(num_steps: int, *, max_lr: float, min_lr: float, warmup: int, horizon: int) -> float:
    if num_steps <= warmup:
        return max_lr * num_steps / warmup
    if num_steps > horizon:
        return min_lr
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * (num_steps - warmup) / (horizon - warmup))) * (max_lr - min_lr)


@pytest.mark.parametrize("stretch", [False, True])
def test_extending_a_run_keeps_the_schedule_horizon_unless_overridden(finished, tmp_path, stretch):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    extra = ["optim.train_steps=6", *(["checkpoint.override=[optim.train_steps]"] if stretch else [])]
    proc = run_train(args_for(run, *extra))
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[:4] == read_metrics(finished)
    horizon = 6 if stretch else 4
    note = (
        "schedules stretched to 6 steps"
        if stretch
        else "the LR and t schedules keep their 4-step horizon: later steps run at optim.min_lr and t_end"
    )
    assert f"optim.train_steps 4 -> 6 (run extended; {'the LR and t ' if stretch else ''}" in proc.stdout
    assert note in proc.stdout
    for row in rows[4:]:  # smoke.yaml: lr 3e-3, min_lr 3e-4
        want = cosine_lr(row["step"] - 1, max_lr=3e-3, min_lr=3e-4, warmup=1, horizon=horizon)
        assert row["lr"] == pytest.approx(want, rel=1e-12), row
    if not stretch:
        assert [r["lr"] for r in rows[4:]] == [3e-4, 3e-4] and [r["taid_t"] for r in rows[4:]] == [1.0, 1.0]
    else:
        assert rows[4]["lr"] > 3e-4 and rows[4]["taid_t"] < 1.0
