"""The tiny runs' settings, shared by the fixtures in conftest.py and the tests that start runs of their own."""

from __future__ import annotations

SPLIT = "data.split=90,5,5"
COMMON = [
    "--config",
    "configs/smoke.yaml",
    SPLIT,
    "data.seq_length=64",
    "parallel.micro_batch_size=4",
    "parallel.global_batch_size=8",
    "logging.wandb_mode=disabled",
    "logging.eval_iters=3",
    "checkpoint.save_interval=0",
    "optim.lr=5e-3",
    "optim.min_lr=5e-4",
    "optim.warmup_steps=2",
]
STUDENT = [
    "student.num_layers=2",
    "student.hidden_size=64",
    "student.num_attention_heads=4",
    "student.num_query_groups=2",
    "student.ffn_hidden_size=128",
]
TEACHER = [
    "teacher.family=qwen2",
    "teacher.num_layers=2",
    "teacher.hidden_size=96",
    "teacher.num_attention_heads=4",
    "teacher.num_query_groups=2",
    "teacher.ffn_hidden_size=192",
    "teacher.tie_embeddings=false",
]


def as_student(teacher_overrides: list[str]) -> list[str]:
    return [o.replace("teacher.", "student.", 1) for o in teacher_overrides]
