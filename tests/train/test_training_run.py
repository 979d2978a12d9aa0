"""The real entry point (`python -m taidtron.train`) on the shipped smoke corpus: a short run learns, logs every
step, and bad configurations stop it with one clear message (exit code 2) before any training."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from taidtron import checkpoint
from tests.support import REPO_ROOT, free_port, subprocess_env

TINY = [
    "student.num_layers=2",
    "student.hidden_size=64",
    "student.num_attention_heads=4",
    "student.num_query_groups=2",
    "student.ffn_hidden_size=128",
    "teacher.num_layers=2",
    "teacher.hidden_size=96",
    "teacher.num_attention_heads=4",
    "teacher.num_query_groups=2",
    "teacher.ffn_hidden_size=192",
    "teacher.init=null",
    "data.seq_length=64",
    "parallel.micro_batch_size=4",
    "parallel.global_batch_size=8",
    "logging.wandb_mode=disabled",
]


def run_train(*args: str, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    env = subprocess_env()
    launcher = (
        [sys.executable, "-m", "taidtron.train"]
        if nproc == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={nproc}",
            f"--master-port={free_port()}",
            "-m",
            "taidtron.train",
        ]
    )
    return subprocess.run(
        [*launcher, "--config", "configs/smoke.yaml", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """`make smoke-test` in miniature: pretrain a tiny teacher (a random one has a flat distribution, so there would
    be nothing to distil), then distil on 2 data-parallel ranks."""
    root = tmp_path_factory.mktemp("short_run")
    overrides = [o for o in TINY if o != "teacher.init=null"]
    proc = subprocess.run(
        [
            sys.executable,
            "tools/smoke_test.py",
            "--run-dir",
            str(root),
            "--teacher-steps",
            "60",
            "--nproc",
            "2",
            *overrides,
            "optim.train_steps=40",
            "optim.warmup_steps=4",
            "optim.lr=5e-3",
            "checkpoint.save_interval=20",
            "logging.eval_interval=20",
            "logging.eval_iters=2",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=subprocess_env(),
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "[PASS] distillation loss falls" in proc.stdout
    run_dir = root / "distill"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return run_dir, rows


@pytest.mark.multiprocess
def test_metrics_jsonl_has_one_row_per_optimizer_step_with_the_documented_fields(short_run):
    _, rows = short_run
    assert [r["step"] for r in rows] == list(range(1, 41))
    for key in ("consumed_tokens", "loss", "taid_t", "lr", "grad_norm", "tokens_per_s"):
        assert all(key in r for r in rows), key
    assert rows[-1]["consumed_tokens"] == 40 * 8 * 64


@pytest.mark.multiprocess
def test_short_data_parallel_run_lowers_the_loss_and_raises_t_monotonically(short_run):
    _, rows = short_run
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last < first - 0.1, (first, last)
    t = [r["taid_t"] for r in rows]
    assert t[0] == 0.4 and t[-1] <= 1.0
    assert all(b >= a for a, b in zip(t, t[1:]))


@pytest.mark.multiprocess
def test_run_writes_config_validation_and_periodic_checkpoints(short_run):
    run_dir, _ = short_run
    assert (run_dir / "config.yaml").is_file()
    evals = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [(e["step"], e.get("final", False)) for e in evals] == [(20, False), (40, True)]  # the last step once
    assert all(e["valid_student_lm_loss"] > 0 and e["valid_teacher_lm_loss"] > 0 for e in evals)
    assert all(e["valid_kl_teacher_student"] >= 0 for e in evals)
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "iter_0000040"
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("iter_*")) == ["iter_0000020", "iter_0000040"]
    # each of the 2 ranks hashed the files it wrote, rank 0 the rest: every file has its digest, and they hold
    meta = checkpoint.verify_checkpoint(run_dir / "checkpoints", contents=True)
    assert set(meta.digests) == set(meta.files) and {"__0_0.distcp", "__1_0.distcp"} <= set(meta.digests)


@pytest.mark.parametrize(
    "override, message",
    [
        (["optim.lrr=1"], "unknown config key(s) optim.lrr"),
        (["foo.bar=1"], "unknown config key(s) foo; valid keys under the root"),
        (["parallel.tp=3"], "parallel.tp * parallel.pp"),
        (["taid.loss=kl"], "taid.loss='kl' is unknown"),
        (["taid.t_start=0.9", "taid.t_end=0.5"], "taid.t_start"),
        (["parallel.global_batch_size=6"], "parallel.global_batch_size (6) must be a multiple"),
        (["optim.lr=[1"], "override optim.lr=[1 is not a valid YAML value"),
        (["optim.lr=fast"], "optim.lr must be of type float, got 'fast'"),
        (["parallel.tp=true"], "parallel.tp must be a number, got True"),
        (["student.family=gpt"], "student.family='gpt' is not supported"),
        (
            ["teacher.num_attention_heads=5"],
            "teacher.hidden_size (96) must be a multiple of teacher.num_attention_heads",
        ),
        (["--config", "configs"], "config file configs is a directory"),
        (["--config", "configs/missing.yaml"], "config file configs/missing.yaml does not exist"),
        (
            ["logging.run_dir=configs/smoke.yaml/run"],
            "logging.run_dir=configs/smoke.yaml/run is not a writable directory",
        ),
        (["data.tokenizer=missing.model"], "missing.model"),
        (["data.tokenizer=configs/smoke.yaml"], "unknown tokenizer format for configs/smoke.yaml"),
        (["data.tokenizer=configs"], "directory configs holds neither tokenizer.json nor tokenizer.model"),
        (["data.blend=[data/smoke/missing]"], "data/smoke/missing.bin and data/smoke/missing.idx not found"),
        (["teacher.init=configs"], "configs is not a taidtron checkpoint"),
    ],
)
def test_invalid_configuration_stops_with_one_clear_message(override, message):
    proc = run_train(*TINY, *override)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert message in proc.stderr, proc.stderr[-3000:]
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]  # one line: no traceback, no warnings


def test_a_yaml_syntax_error_in_the_config_file_is_one_line_naming_where(tmp_path):
    lines = (REPO_ROOT / "configs" / "smoke.yaml").read_text().splitlines()
    opened = lines.index("  lr: 3.0e-3") + 1  # 1-based line of the bracket opened and never closed
    lines[opened - 1] = "  lr: [3.0e-3"
    bad = tmp_path / "exp.yaml"
    bad.write_text("\n".join(lines) + "\n")
    proc = run_train(f"--config={bad}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"taidtron: configuration error: config file {bad} is not valid YAML: expected ',' or ']', but got ':' at "
        f"line {opened + 1}, column 9, while parsing a flow sequence at line {opened}."
    ], proc.stderr


@pytest.mark.parametrize("loss", ["fkl", "skew_rkl", "js"])
def test_baseline_objectives_train_through_the_same_loop(loss, tmp_path):
    proc = run_train(
        *TINY,
        f"taid.loss={loss}",
        "optim.train_steps=3",
        "optim.warmup_steps=1",
        "logging.eval_interval=0",
        f"logging.run_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["loss"] >= 0 and r["grad_norm"] > 0 for r in rows)
    assert not any("taid_t" in r for r in rows)  # t is logged only where the loss uses it
    # A batch log: one banner, then a plain line per step (log_interval 1), no progress bar, no library noise.
    meta = json.loads((REPO_ROOT / "data/smoke/smoke_text_document.meta.json").read_text())
    assert proc.stdout.count("layout      world 1 = tp 1 x pp 1 x dp 1") == 1, proc.stdout
    assert f"objective   taid.loss={loss}" in proc.stdout
    assert f"data/smoke/smoke_text_document: {meta['documents']:,} documents, {meta['tokens']:,} tokens" in proc.stdout
    assert f"plan        3 steps = {3 * 8 * 64 / 1e3:.2f}K tokens ({3 * 8 * 64:,}); new run" in proc.stdout
    assert [line.split(" | ")[0] for line in proc.stdout.splitlines() if line.startswith("step ")] == [
        "step 1/3",
        "step 2/3",
        "step 3/3",
    ]
    assert "\r" not in proc.stdout and "Warning" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.multiprocess
def test_lm_objective_trains_the_student_alone_and_reports_its_lm_loss(tmp_path):
    # the teacher section is ignored: 3 layers would not even split into the 2 stages of parallel.pp=2
    proc = run_train(
        *TINY,
        "taid.loss=lm",
        "teacher.num_layers=3",
        "parallel.pp=2",
        "parallel.micro_batch_size=2",
        "optim.train_steps=4",
        "optim.warmup_steps=1",
        "logging.eval_interval=2",
        "logging.eval_iters=1",
        f"logging.run_dir={tmp_path}",
        nproc=2,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and not any("taid_t" in r for r in rows)
    evals = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [set(e) - {"step", "final"} for e in evals] == [{"valid_student_lm_loss", "valid_student_entropy"}] * 2


def test_sigusr1_during_start_up_saves_after_one_step_exits_75_and_the_rerun_resumes(tmp_path):
    env = subprocess_env()
    args = [
        sys.executable,
        "-m",
        "taidtron.train",
        "--config",
        "configs/smoke.yaml",
        *TINY,
        "optim.train_steps=4",
        "optim.warmup_steps=1",
        "logging.eval_interval=0",
        f"logging.run_dir={tmp_path}",
    ]
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)  # still importing torch and megatron: the handler must already be there
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 75, stderr[-3000:]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "iter_0000001"

    rerun = subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert "resumed from" in rerun.stderr + rerun.stdout


def test_lm_loss_weight_logs_both_terms_and_t_follows_the_distillation_loss_alone(tmp_path):
    from taidtron.losses import TAIDSchedule

    proc = run_train(
        *TINY,
        "taid.lm_loss_weight=0.5",
        "taid.alpha=0.05",
        "optim.train_steps=5",
        "optim.warmup_steps=1",
        "logging.eval_interval=0",
        f"logging.run_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["lm_loss"] > 0 and r["loss"] > 0 for r in rows)
    # replaying the schedule on the logged distillation losses gives the logged t: the LM term does not drive t
    schedule = TAIDSchedule(alpha=0.05)
    replay = [schedule.update(r["loss"], steps_done, 5) for steps_done, r in enumerate(rows)]
    assert [r["taid_t"] for r in rows] == pytest.approx(replay, rel=1e-12)
    assert replay[-1] > replay[1]  # and t did move
