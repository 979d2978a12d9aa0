"""Short distillations with an imported teacher, and the run-directory surgery of the resume tests."""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

from taidtron import checkpoint
from tests.hf.helpers import SMOKE_VOCAB
from tests.support import free_port, run_cli


def teacher_overrides(ckpt: Path) -> list[str]:
    """The teacher section of a run whose teacher is an imported checkpoint (what `convert import` prints)."""
    model = dataclasses.asdict(checkpoint.read_meta(ckpt).model)
    return [f"teacher.{k}={v}" for k, v in model.items() if k != "init"] + [f"teacher.init={ckpt}"]


def train_args(run_dir: Path, teacher_ckpt: Path | None, *extra: str, config: str = "configs/smoke.yaml") -> list[str]:
    """A tiny distillation on the smoke corpus: 2-layer 64-wide student, imported Qwen2 teacher, fp32. With
    `teacher_ckpt` None the models are `config`'s own sections."""
    models = (
        [
            "student.num_layers=2",
            "student.hidden_size=64",
            "student.num_attention_heads=4",
            "student.num_query_groups=2",
            "student.ffn_hidden_size=128",
            f"student.vocab_size={SMOKE_VOCAB}",
            *teacher_overrides(teacher_ckpt),
        ]
        if teacher_ckpt is not None
        else []
    )
    return [
        "--config",
        config,
        *models,
        "precision=fp32",
        "data.seq_length=32",
        f"data.cache_dir={run_dir.parent / 'index_cache'}",
        "parallel.micro_batch_size=2",
        "parallel.global_batch_size=4",
        "optim.lr=3e-3",
        "optim.warmup_steps=1",
        "logging.eval_interval=0",
        "logging.eval_iters=1",
        "logging.wandb_mode=disabled",
        f"logging.run_dir={run_dir}",
        *extra,
    ]


def run_train(
    args: list[str], nproc: int = 1, expect_ok: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    if nproc == 1:
        return run_cli("-m", "taidtron.train", *args, expect_ok=expect_ok, env=env)
    launcher = [  # as launch/torchrun.sh runs it: the job exits with the ranks' code, their error line once
        "-m",
        "taidtron.torchrun",
        f"--nproc-per-node={nproc}",
        "--nnodes=1",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        "-m",
        "taidtron.train",
    ]
    return run_cli(*launcher, *args, expect_ok=expect_ok, env=env)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def restart_from(source_run: Path, step: int, new_run: Path) -> None:
    """Lay out `new_run` as the first half of an interrupted run: its checkpoint at `step` (as `latest`) and the
    metrics rows it had written up to that step."""
    from shutil import copytree

    name = f"iter_{step:07d}"
    copytree(source_run / "checkpoints" / name, new_run / "checkpoints" / name)
    (new_run / "checkpoints" / "latest").write_text(name)
    rows = [row for row in read_metrics(source_run) if row["step"] <= step]
    (new_run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
