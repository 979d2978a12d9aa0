"""Resume through `python -m taidtron.train`: exact on the same layout, within tolerance across tp/pp, refused
with another teacher; and the exported student of a training run loads in transformers with the same logits."""

from __future__ import annotations

import concurrent.futures
import json
from pathlib import Path

import pytest

from tests.hf.helpers import CONVERT, make_qwen2
from tests.support import REPO_ROOT, gpu_env, require_gpu, run_cli, run_torchrun

from .helpers import read_metrics, restart_from, run_train, train_args

PARITY_WORKER = REPO_ROOT / "tests" / "hf" / "parity_worker.py"
STEPS = 6
EXACT_KEYS = ("step", "consumed_samples", "consumed_tokens", "loss", "taid_t", "lr", "grad_norm")


@pytest.fixture(scope="module")
def straight(teacher_ckpt, tmp_path_factory) -> Path:
    """STEPS steps in one go, a checkpoint after every step (keep_last=4)."""
    run = tmp_path_factory.mktemp("runs") / "straight"
    run_train(
        train_args(
            run, teacher_ckpt, f"optim.train_steps={STEPS}", "checkpoint.save_interval=1", "checkpoint.keep_last=4"
        )
    )
    return run


def test_keep_last_keeps_newest_checkpoints(straight):
    names = sorted(p.name for p in (straight / "checkpoints").iterdir())
    assert names == ["iter_0000003", "iter_0000004", "iter_0000005", "iter_0000006", "latest"]
    assert (straight / "checkpoints" / "latest").read_text() == "iter_0000006"


def test_restart_halfway_gives_identical_metrics(straight, teacher_ckpt, tmp_path):
    """N/2 + restart + N/2 == N straight: the restarted run starts from the straight run's checkpoint at N/2 (what
    a first process stopped there would have left: checkpoint, `latest`, metrics rows) and must log the same
    metrics.jsonl rows, every value equal (fp32 CPU), timings aside."""
    resumed = tmp_path / "resumed"
    restart_from(straight, STEPS // 2, resumed)
    proc = run_train(
        train_args(
            resumed, teacher_ckpt, f"optim.train_steps={STEPS}", "checkpoint.save_interval=1", "checkpoint.keep_last=4"
        )
    )
    assert "RNG states not restored" not in proc.stderr  # same layout: the random streams are restored too
    assert f"resumed from {resumed / 'checkpoints' / 'iter_0000003'}" in proc.stdout + proc.stderr
    want = [{k: row[k] for k in EXACT_KEYS} for row in read_metrics(straight)]
    got = [{k: row[k] for k in EXACT_KEYS} for row in read_metrics(resumed)]
    assert [r["step"] for r in got] == list(range(1, STEPS + 1))
    assert got == want


@pytest.mark.multiprocess
def test_restart_halfway_at_dp2_gives_identical_metrics(teacher_ckpt, tmp_path):
    """At dp=2 the replicas split the reading of each checkpoint (megatron's fully parallel load over the
    data-parallel group: the teacher at start-up, then the student and the distributed optimizer's state on
    resume) and exchange what they read; the resumed run must still log the straight run's rows exactly."""
    steps = 4
    straight = tmp_path / "dp2"
    args = (f"optim.train_steps={steps}", "checkpoint.save_interval=2", "parallel.distributed_optimizer=true")
    run_train(train_args(straight, teacher_ckpt, *args), nproc=2)
    resumed = tmp_path / "dp2_resumed"
    restart_from(straight, steps // 2, resumed)
    proc = run_train(train_args(resumed, teacher_ckpt, *args), nproc=2)
    assert "RNG states not restored" not in proc.stderr
    want = [{k: row[k] for k in EXACT_KEYS} for row in read_metrics(straight)]
    got = [{k: row[k] for k in EXACT_KEYS} for row in read_metrics(resumed)]
    assert [r["step"] for r in got] == list(range(1, steps + 1))
    assert got == want


def test_resume_with_another_teacher_is_refused(straight, teacher_ckpt, tmp_path):
    other_teacher = tmp_path / "other_teacher"
    run_cli(
        str(CONVERT),
        "import",
        "--hf",
        str(make_qwen2(tmp_path / "other_hf", seed=1)),
        "--out",
        str(other_teacher),
        "--no-progress",
    )
    resumed = tmp_path / "other"
    restart_from(straight, STEPS // 2, resumed)
    proc = run_train(train_args(resumed, other_teacher, f"optim.train_steps={STEPS}"), expect_ok=False)
    assert proc.returncode != 0
    assert "teacher changed" in proc.stderr, proc.stderr[-3000:]
    assert read_metrics(resumed)[-1]["step"] == STEPS // 2  # nothing trained


def test_exported_student_logits_match_transformers(straight, tmp_path):
    """A training checkpoint -> HF directory (tokenizer included): transformers' logits equal taidtron's, and the
    shipped tokenizer encodes like the run's sentencepiece model."""
    out = tmp_path / "student_hf"
    run_cli(str(CONVERT), "export", "--ckpt", str(straight / "checkpoints"), "--out", str(out), "--no-progress")
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors.index.json",
        "tokenizer.model",
        "tokenizer_config.json",
    } <= {p.name for p in out.iterdir()}
    (result,) = run_torchrun(PARITY_WORKER, 1, "1", "1", f"{out}:{straight / 'checkpoints'}")
    print(result["parity"])
    assert list(result["parity"].values())[0] <= 1e-4

    import sentencepiece
    from transformers import AutoTokenizer

    text = "Mia has a red ball. She plays with Tom!"
    sp = sentencepiece.SentencePieceProcessor(model_file=str(REPO_ROOT / "data" / "smoke" / "tokenizer.model"))
    assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == sp.encode(text)
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == sp.eos_id()


@pytest.mark.multiprocess
def test_resume_at_another_layout_continues_with_same_loss(teacher_ckpt, tmp_path):
    """Saved at tp=2 pp=1, resumed at tp=1 pp=2: the first resumed step's loss equals the straight run's."""
    steps = 4
    straight = tmp_path / "tp2"
    run_train(
        train_args(straight, teacher_ckpt, f"optim.train_steps={steps}", "checkpoint.save_interval=2", "parallel.tp=2"),
        nproc=2,
    )
    resumed = tmp_path / "pp2"
    restart_from(straight, steps // 2, resumed)
    proc = run_train(
        train_args(resumed, teacher_ckpt, f"optim.train_steps={steps}", "checkpoint.save_interval=2", "parallel.pp=2"),
        nproc=2,
    )
    assert "RNG states not restored" in proc.stderr  # per-rank streams do not reshard; said so, not silently
    want, got = read_metrics(straight), read_metrics(resumed)
    first = steps // 2  # index of the first resumed step's row
    assert got[first]["step"] == want[first]["step"] == steps // 2 + 1
    assert got[first]["loss"] == pytest.approx(want[first]["loss"], rel=1e-4)
    assert got[first]["taid_t"] == pytest.approx(want[first]["taid_t"], rel=1e-6)
    assert got[first]["lr"] == pytest.approx(want[first]["lr"], rel=1e-6)
    assert got[-1]["loss"] == pytest.approx(want[-1]["loss"], rel=1e-3)
    print(
        f"tp=2 straight vs tp=1 pp=2 resumed, step {steps // 2 + 1}: loss {want[first]['loss']!r} vs "
        f"{got[first]['loss']!r}; step {steps}: {want[-1]['loss']!r} vs {got[-1]['loss']!r}"
    )

    # The pp=2 checkpoint (tied student: its output layer lives on the last stage) exports like any other, and
    # transformers' logits match taidtron's forward of it at yet another layout (tp=2).
    exported = tmp_path / "pp2_hf"
    run_cli(str(CONVERT), "export", "--ckpt", str(resumed / "checkpoints"), "--out", str(exported), "--no-progress")
    results = run_torchrun(PARITY_WORKER, 2, "2", "1", f"{exported}:{resumed / 'checkpoints'}")
    print(results[0]["parity"])
    assert all(list(r["parity"].values())[0] <= 1e-4 for r in results)


@pytest.mark.gpu
def test_gpu_restart_halfway_with_the_distributed_optimizer(tmp_path):
    """On a GPU in bf16 with the distributed optimizer: N/2 + restart + N/2 against N straight. Bit-exact when the
    GPU kernels are deterministic (a second straight run equals the first). Otherwise (atomics in a backward) the
    resumed run may differ from the straight one by at most 4x what the second straight run does: it shares the
    straight run's first N/2 steps, so its expected difference is smaller than the second run's, and the factor keeps
    one unlucky step from failing the test, while a resume that loses state (optimizer moments, the data position)
    changes the next steps far beyond rounding. The two straight runs share the GPU side by side."""
    require_gpu()

    def args(run_dir: Path) -> list[str]:
        return [
            "--config",
            "configs/smoke.yaml",
            "teacher.init=null",
            "precision=bf16",
            "parallel.distributed_optimizer=true",
            f"optim.train_steps={STEPS}",
            "optim.warmup_steps=1",
            "checkpoint.save_interval=1",
            "checkpoint.keep_last=4",
            "logging.eval_interval=0",
            "logging.eval_iters=1",
            "logging.wandb_mode=disabled",
            f"data.cache_dir={tmp_path / 'index_cache'}",
            f"logging.run_dir={run_dir}",
        ]

    straight, again, resumed = tmp_path / "straight", tmp_path / "again", tmp_path / "resumed"
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two processes, one GPU: one start-up's wait for both
        list(pool.map(lambda run: run_train(args(run), env=gpu_env()), (straight, again)))
    restart_from(straight, STEPS // 2, resumed)
    proc = run_train(args(resumed), env=gpu_env())
    assert "RNG states not restored" not in proc.stderr
    rows = {
        name: [{k: row[k] for k in EXACT_KEYS} for row in read_metrics(run)]
        for name, run in (("straight", straight), ("again", again), ("resumed", resumed))
    }
    assert [r["step"] for r in rows["resumed"]] == list(range(1, STEPS + 1))

    def max_rel_diff(a: list[dict], b: list[dict]) -> float:
        return max(abs(x[k] - y[k]) / max(abs(y[k]), 1e-12) for x, y in zip(a, b) for k in EXACT_KEYS)

    noise = max_rel_diff(rows["again"], rows["straight"])
    print(
        f"GPU resume: straight vs again {noise:.3g}, straight vs resumed "
        f"{max_rel_diff(rows['resumed'], rows['straight']):.3g} (max relative difference over {EXACT_KEYS})"
    )
    if noise == 0:
        assert rows["resumed"] == rows["straight"]
    else:
        assert max_rel_diff(rows["resumed"], rows["straight"]) <= 4 * noise
