"""A config whose model sections name only `init` trains: the architecture comes from the imported checkpoint, the
banner and the run's config.yaml show it, and a key that contradicts the checkpoint ends the start in one line."""

from __future__ import annotations

from pathlib import Path

import yaml

from taidtron import checkpoint
from taidtron.config import ModelConfig
from tests.support import REPO_ROOT

from .helpers import run_train, train_args


def init_only_config(tmp_path: Path, ckpt: Path) -> Path:
    """configs/smoke.yaml with `student: {init: ckpt}` and `teacher: {init: ckpt}` as its model sections."""
    tree = yaml.safe_load((REPO_ROOT / "configs" / "smoke.yaml").read_text())
    tree["student"] = {"init": str(ckpt)}
    tree["teacher"] = {"init": str(ckpt)}
    path = tmp_path / "init_only.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def test_models_named_by_init_alone_train_with_the_checkpoints_architecture(teacher_ckpt, tmp_path):
    config = init_only_config(tmp_path, teacher_ckpt)
    run_dir = tmp_path / "run"
    proc = run_train(train_args(run_dir, None, "optim.train_steps=2", config=str(config)))
    recorded = checkpoint.read_meta(teacher_ckpt).model
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    for role in ("student", "teacher"):
        assert {key: saved[role][key] for key in ModelConfig.RECORDED_FIELDS} == {
            key: getattr(recorded, key) for key in ModelConfig.RECORDED_FIELDS
        }, role
    # the tiny imported Qwen2 of tests/hf/helpers.make_qwen2
    described = "qwen2, 2 layers, hidden 64, 4 heads / 2 kv groups, ffn 160, vocab 1024"
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if described in line]
    assert [line.split()[0] for line in lines] == ["student", "teacher"], proc.stdout[-3000:]
    assert all(f"init {teacher_ckpt}" in line for line in lines), lines


def test_a_key_that_contradicts_the_init_checkpoint_ends_the_start_in_one_line(teacher_ckpt, tmp_path):
    config = init_only_config(tmp_path, teacher_ckpt)
    proc = run_train(train_args(tmp_path / "run", None, "student.hidden_size=128", config=str(config)), expect_ok=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("taidtron:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith("taidtron: configuration error: the student section contradicts"), lines
    assert "student.hidden_size=128 but the checkpoint has 64" in lines[0], lines
    assert not (tmp_path / "run").exists()  # refused before anything was created
